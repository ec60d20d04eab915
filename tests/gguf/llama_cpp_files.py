"""llama.cpp's own GGUF files for the tests: its `convert_hf_to_gguf.py` (from the llama-cpp-python
sdist, found or downloaded and extracted once into ~/.cache/amd_llama4 by perf/local_model.py's
`converter_dir`) run on a random transformers checkpoint; types the converter does not write are
made from its F32 file with `gguf.quants` (llama.cpp's reference quantisers, in numpy).

The converter names a BPE pre-tokenizer by hashing its tokens on a probe text; our tiny tokenizer's
512-token vocabulary is not among its known hashes, so it is told the name. The tiny tokenizer's
split regex is Llama 3's, which llama.cpp calls "llama-bpe".
"""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from amd_llama4.gguf import names

ROOT = Path(__file__).resolve().parents[2]

# One process converts to every type (importing torch is the slow part on a loaded machine). The
# converter imports its own gguf-py (newer than PyPI's), so it never runs in the test process.
_CONVERT = """
import sys
d, folder, out_dir, pre, *types = sys.argv[1:]
sys.path.insert(0, d)
import convert_hf_to_gguf, conversion.base as base
base.TextModel.get_vocab_base_pre = lambda self, tokenizer: pre
for t in types:
    sys.argv = ["convert_hf_to_gguf.py", folder, "--outfile", f"{out_dir}/model-{t}.gguf", "--outtype", t]
    convert_hf_to_gguf.main()
"""


def _local_model():
    spec = importlib.util.spec_from_file_location("perf_local_model", ROOT / "perf" / "local_model.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def converter_dir() -> Path:
    """The extracted converter, or a skip saying why it cannot be had (no sdist and no network)."""
    try:
        return _local_model().converter_dir()
    except (RuntimeError, OSError) as e:
        pytest.skip(f"llama.cpp's convert_hf_to_gguf.py unavailable: {e}")


def convert(folder: Path, out_dir: Path, types=("f32", "f16", "bf16", "q8_0"), pre: str = "llama-bpe") -> dict:
    """{outtype: GGUF path} written by llama.cpp's converter from the transformers folder."""
    env = {k: v for k, v in os.environ.items() if k != "NO_LOCAL_GGUF"}
    r = subprocess.run([sys.executable, "-c", _CONVERT, str(converter_dir()), str(folder), str(out_dir), pre, *types],
                       capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise RuntimeError(f"convert_hf_to_gguf.py failed:\n{r.stderr[-3000:]}")
    return {t: out_dir / f"model-{t}.gguf" for t in types}


def requantize(src: Path, out: Path, qtype: str, drop: tuple[str, ...] = (), arch: str | None = None,
               remove_keys: tuple[str, ...] = (), replace: dict | None = None) -> Path:
    """A copy of the GGUF `src` with its F32 2-D+ weights stored as `qtype` (where rows are whole
    blocks; norms, router and rope_freqs stay F32), as llama-quantize would; `drop` / `arch` /
    `remove_keys` / `replace` ({name: numpy array}) make broken files for the error tests."""
    import gguf

    q = gguf.GGMLQuantizationType[qtype.upper()]
    block = gguf.GGML_QUANT_SIZES[q][0]
    r = gguf.GGUFReader(str(src))
    w = gguf.GGUFWriter(str(out), arch or r.fields["general.architecture"].contents())
    for f in r.fields.values():
        if f.name.startswith("GGUF.") or f.name in ("general.architecture", *remove_keys):
            continue
        vt = f.types[0]
        w.add_key_value(f.name, f.contents(), vt, sub_type=f.types[-1] if vt == gguf.GGUFValueType.ARRAY else None)
    for t in r.tensors:
        if t.name in drop:
            continue
        if replace and t.name in replace:
            w.add_tensor(t.name, replace[t.name])
            continue
        data = np.array(t.data)
        shape = tuple(int(n) for n in reversed(t.shape.tolist()))
        keep = (q == gguf.GGMLQuantizationType.F32 or t.tensor_type != gguf.GGMLQuantizationType.F32
                or len(shape) < 2 or shape[-1] % block
                or t.name.endswith("ffn_gate_inp.weight") or t.name == names.ROPE_FREQS)
        if keep:
            w.add_tensor(t.name, data, raw_dtype=t.tensor_type)
        else:
            w.add_tensor(t.name, gguf.quants.quantize(data.reshape(shape), q), raw_dtype=q)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return out


def _file_tensor(t) -> torch.Tensor:
    """A GGUF tensor's values in torch order, decoded by gguf's reference (numpy) dequantisers."""
    import gguf

    shape = tuple(int(n) for n in reversed(t.shape.tolist()))
    return torch.from_numpy(np.array(gguf.quants.dequantize(np.array(t.data), t.tensor_type),
                                     dtype=np.float32).reshape(shape))


def set_from_file(model, path: Path) -> None:
    """Overwrite every text weight of `model` (ours or transformers': same parameter names) with the
    values the GGUF file `path` stores: the reference 'same model on the dequantised weights'."""
    import gguf

    tensors = {t.name: t for t in gguf.GGUFReader(str(path)).tensors}
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.startswith(("vision_model.", "multi_modal_projector.")) or (
                    n == "lm_head.weight" and "output.weight" not in tensors):
                continue
            g = [_file_tensor(tensors[x]) for x in names.gguf_names(n)]
            if n.endswith("experts.gate_up_proj"):  # gate, up [E, I, H] -> [E, H, 2I]
                p.copy_(torch.cat(g, 1).transpose(1, 2))
            elif n.endswith("experts.down_proj"):  # [E, H, I] -> [E, I, H]
                p.copy_(g[0].transpose(1, 2))
            else:
                p.copy_(g[0])
