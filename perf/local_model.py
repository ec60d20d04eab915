"""The shared random Scout-shaped checkpoint of perf/bench_local.py, as a transformers folder and as
GGUF files written by llama.cpp's own tools.

Shape: Scout's structure (every layer MoE, 16 experts top-1 + a shared expert, QK norm, iRoPE with
every 4th layer NoPE, llama3 RoPE scaling) at hidden 1024, 8 layers, head_dim 128 (8 query heads, 2
KV heads), expert intermediate 2048, with the packaged tiny tokenizer (vocab 512: the LM head stays
small, as in the issue's measurement). Random weights from a seed (norms near 1, experts wider than
transformers' init so every weight matters).

GGUF: llama.cpp's `convert_hf_to_gguf.py` (from the llama-cpp-python sdist: the converter, its
`conversion/` package and `gguf-py`, extracted to ~/.cache/amd_llama4/) for F32/F16/BF16/Q8_0;
Q4_0 by llama.cpp's quantizer (`llama_cpp.llama_model_quantize`, needs llama-cpp-python).
The converter recognises a BPE pre-tokenizer by the hash of its tokens on a probe text; our tiny
tokenizer has Llama 4's split regex but a 512-token vocab, so the hash is unknown and the converter
is told the pre-tokenizer name ("llama4") instead of guessing it.

    python perf/local_model.py OUT_DIR [--types f32,bf16,q8_0,q4_0]
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import torch

LLAMA_CPP_VERSION = "0.3.36"
SDIST_NAME = f"llama_cpp_python-{LLAMA_CPP_VERSION}.tar.gz"
CACHE = Path(os.environ.get("AMD_LLAMA4_CACHE", Path.home() / ".cache" / "amd_llama4"))
# Where a lead or CI may have put the sdist already (searched before downloading).
SDIST_DIRS = (Path("/tmp/wheels/sdist"), CACHE)

SCOUT_SHAPED = dict(hidden_size=1024, num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=2,
                    head_dim=128, intermediate_size=2048, intermediate_size_mlp=4096, vocab_size=512,
                    num_local_experts=16, num_experts_per_tok=1, interleave_moe_layer_step=1, use_qk_norm=True,
                    rope_scaling=dict(factor=16.0, low_freq_factor=1.0, high_freq_factor=1.0,
                                      original_max_position_embeddings=8192),
                    attention_chunk_size=8192, max_position_embeddings=16384,
                    bos_token_id=1, eos_token_id=[2, 3, 4], pad_token_id=0)
# llama.cpp's `ftype` of each quantised type made by its quantizer (llama.h: LLAMA_FTYPE_MOSTLY_*).
QUANTIZE_FTYPES = {"q4_0": 2, "q8_0": 7, "q4_k_m": 15, "q6_k": 18}
CONVERTER_TYPES = ("f32", "f16", "bf16", "q8_0")


def scout_shaped_config(**overrides):
    from amd_llama4.config import Llama4Config

    return Llama4Config(**{**SCOUT_SHAPED, **overrides})


def build_checkpoint(folder: str | os.PathLike, seed: int = 0, **overrides) -> Path:
    """A transformers Llama4ForCausalLM with random weights saved to `folder` (safetensors, fp32) with
    the tiny tokenizer's files, as the converter and our loader both read it."""
    import transformers

    from amd_llama4.engine.tokenizer import tiny_tokenizer_dir

    folder = Path(folder)
    cfg = scout_shaped_config(**overrides)
    hf_cfg = transformers.Llama4TextConfig(**{k: v for k, v in cfg.to_hf_dict().items()
                                              if k not in ("model_type", "architectures")})
    torch.manual_seed(seed)
    model = transformers.Llama4ForCausalLM(hf_cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1 + 0.1 * torch.randn_like(p))
            elif "experts" in name:
                p.copy_(0.02 * torch.randn_like(p))
    model.save_pretrained(folder)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny_tokenizer_dir() / f, folder / f)
    return folder


def _find_sdist() -> Path:
    for d in SDIST_DIRS:
        if (d / SDIST_NAME).is_file():
            return d / SDIST_NAME
    CACHE.mkdir(parents=True, exist_ok=True)
    r = subprocess.run([sys.executable, "-m", "pip", "download", f"llama-cpp-python=={LLAMA_CPP_VERSION}",
                        "--no-deps", "--no-binary", ":all:", "-d", str(CACHE)], capture_output=True, text=True)
    if r.returncode != 0 or not (CACHE / SDIST_NAME).is_file():
        raise RuntimeError(f"llama.cpp's converter: no {SDIST_NAME} in {[str(d) for d in SDIST_DIRS]} and "
                           f"pip download failed: {r.stderr.strip()[-500:]}")
    return CACHE / SDIST_NAME


def converter_dir() -> Path:
    """llama.cpp's convert_hf_to_gguf.py with its `conversion/` package and `gguf-py`, extracted once
    from the llama-cpp-python sdist into the cache (only those files)."""
    out = CACHE / f"llama_cpp_converter-{LLAMA_CPP_VERSION}"
    if (out / "convert_hf_to_gguf.py").is_file():
        return out
    prefix = f"llama_cpp_python-{LLAMA_CPP_VERSION}/vendor/llama.cpp/"
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    with tarfile.open(_find_sdist()) as tar:
        members = [m for m in tar.getmembers() if m.isfile() and m.name.startswith(prefix) and (
            m.name == prefix + "convert_hf_to_gguf.py" or m.name.startswith(prefix + "conversion/")
            or m.name.startswith(prefix + "gguf-py/"))]
        for m in members:
            m.name = m.name[len(prefix):]
        tar.extractall(tmp, members=members, filter="data")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


# Runs the converter's main() with the pre-tokenizer named (see the module docstring); argv follows.
_CONVERT = """
import sys
sys.path.insert(0, sys.argv.pop(1))
import convert_hf_to_gguf, conversion.base as base
base.TextModel.get_vocab_base_pre = lambda self, tokenizer: "llama4"
sys.argv[0] = "convert_hf_to_gguf.py"
convert_hf_to_gguf.main()
"""


def convert_to_gguf(folder: str | os.PathLike, out: str | os.PathLike, outtype: str = "f32") -> Path:
    """llama.cpp's convert_hf_to_gguf.py on a transformers folder -> `out` (outtype: f32|f16|bf16|q8_0)."""
    if outtype not in CONVERTER_TYPES:
        raise ValueError(f"convert_to_gguf: outtype {outtype!r} is not one the converter writes {CONVERTER_TYPES}; "
                         "quantise an f32 GGUF with quantize_gguf")
    r = subprocess.run([sys.executable, "-c", _CONVERT, str(converter_dir()), str(folder), "--outfile", str(out),
                        "--outtype", outtype], capture_output=True, text=True,
                       env={k: v for k, v in os.environ.items() if k != "NO_LOCAL_GGUF"})  # its own gguf-py
    if r.returncode != 0 or not Path(out).is_file():
        raise RuntimeError(f"convert_hf_to_gguf.py {folder} --outtype {outtype} failed:\n{r.stderr[-3000:]}")
    return Path(out)


def quantize_gguf(src: str | os.PathLike, out: str | os.PathLike, qtype: str, threads: int = 2) -> Path:
    """llama.cpp's quantizer (through llama-cpp-python): src GGUF (f32/f16/bf16) -> `out` of qtype."""
    if qtype not in QUANTIZE_FTYPES:
        raise ValueError(f"quantize_gguf: qtype {qtype!r} not in {sorted(QUANTIZE_FTYPES)}")
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype, params.nthread = QUANTIZE_FTYPES[qtype], threads
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(out).encode(), params)
    if rc != 0:
        raise RuntimeError(f"llama_model_quantize({src} -> {qtype}) returned {rc}")
    return Path(out)


def build_all(out_dir: str | os.PathLike, types=("f32", "bf16", "q8_0", "q4_0"), seed: int = 0,
              **overrides) -> dict[str, Path]:
    """The transformers folder (`hf`) and one GGUF per type under out_dir, reused when present
    (overrides: config fields, e.g. smaller shapes for tests)."""
    out_dir = Path(out_dir)
    hf = out_dir / "hf"
    if not (hf / "config.json").is_file():
        build_checkpoint(hf, seed, **overrides)
    paths = {"hf": hf}
    for t in types:
        p = out_dir / f"scout-shaped-{t}.gguf"
        if not p.is_file():
            if t in CONVERTER_TYPES:
                convert_to_gguf(hf, p, t)
            else:
                f32 = out_dir / "scout-shaped-f32.gguf"
                if not f32.is_file():
                    convert_to_gguf(hf, f32, "f32")
                quantize_gguf(f32, p, t)
        paths[t] = p
    return paths


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out_dir")
    ap.add_argument("--types", default="f32,bf16,q8_0,q4_0")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    for name, p in build_all(args.out_dir, tuple(t for t in args.types.split(",") if t), args.seed).items():
        print(f"{name}: {p}")


if __name__ == "__main__":
    main()
