"""Write an FP8 checkpoint (sharded safetensors + config.json) that our loader reads back, and verify it.

Layout (names as the model's parameters, so the loader maps them 1:1):
  linears  `X.weight` fp8 [out, in] + `X.weight_scale` fp32 [out, 1] (per channel), or with --block
           `X.weight_scale_inv` fp32 [ceil(out/b), ceil(in/b)] (the name HF fine-grained FP8 uses)
  experts  `...experts.gate_up_proj` fp8 [E, H, 2I] + `gate_up_proj_scale` [E, 1, 2I]; `down_proj` [E, I, H] +
           `down_proj_scale` [E, H, 1] (per channel: exactly Meta's / transformers' fbgemm_fp8 layout,
           quant/fbgemm.py) or [E, 1, H] (with --block)
  KV       `model.layers.N.self_attn.{k,v}_scale` when the source carried them
  others   (router, norms, embeddings, lm_head, ignored modules) in `dtype`
config.json `quantization_config`: quant_method "fbgemm_fp8" (per channel) or "fp8" (+ weight_block_size),
`fmt` (the stored fp8 format, our key), `modules_to_not_convert`. The shard index carries each shard's
sha256 under metadata, which `verify_checkpoint` checks before loading the result back.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil

import torch
from safetensors.torch import save_file

from amd_llama4.config import QuantConfig
from amd_llama4.model.safetensors_io import CheckpointError, shard_bar
from amd_llama4.platform import FP8_DTYPES, fp8_spec
from amd_llama4.quant import fbgemm

INDEX = "model.safetensors.index.json"
# Non-weight files a checkpoint folder may carry; copied as they are.
_SIDE_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json",
               "chat_template.json", "chat_template.jinja", "tokenizer.model")


def parse_size(s: str | int) -> int:
    """'5GB' / '500MB' / '20KB' / 1234 -> bytes (decimal units, as transformers' max_shard_size)."""
    if isinstance(s, int):
        return s
    t = s.strip().upper()
    for unit, mult in (("GB", 10 ** 9), ("MB", 10 ** 6), ("KB", 10 ** 3), ("B", 1)):
        if t.endswith(unit):
            return int(float(t[: -len(unit)]) * mult)
    return int(t)


def checkpoint_tensors(model, dtype: torch.dtype = torch.bfloat16) -> dict[str, torch.Tensor]:
    """The tensors to write: fp8 weights and fp32 scales as they are, everything else in `dtype`;
    expert scales in fbgemm_fp8's layout when the model is per-channel (written as fbgemm_fp8)."""
    from amd_llama4.quant.fp8 import FP8Linear

    block_scaled = {n for n, m in model.named_modules() if isinstance(m, FP8Linear) and m.block is not None}
    q = getattr(model, "quant_config", None)
    as_fbgemm = q is not None and q.weight_block is None
    tied = model.config.tie_word_embeddings
    out = {}
    for name, p in model.named_parameters():
        if tied and name == "lm_head.weight":
            continue
        t = p.detach()
        if name.endswith("_scale") or name.endswith(".weight_scale"):
            t = t.float()
            if name.removesuffix(".weight_scale") in block_scaled:
                name += "_inv"
            if as_fbgemm:
                t = fbgemm.to_checkpoint_layout(name, t)
        elif t.dtype not in FP8_DTYPES:
            t = t.to(dtype)
        out[name] = t.contiguous()
    for layer, kv in (getattr(model, "kv_scales", None) or {}).items():
        for which, s in kv.items():
            out[f"model.layers.{layer}.self_attn.{which}_scale"] = s.float().contiguous()
    return out


def _shards(tensors: dict[str, torch.Tensor], max_bytes: int) -> list[list[str]]:
    shards, cur, size = [], [], 0
    for name, t in tensors.items():
        n = t.numel() * t.element_size()
        if cur and size + n > max_bytes:
            shards.append(cur)
            cur, size = [], 0
        cur.append(name)
        size += n
    return shards + [cur] if cur else shards


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _write_shard(tensors: dict[str, torch.Tensor], path: str) -> None:
    save_file(tensors, path, metadata={"format": "pt"})


def quantization_config(q: QuantConfig, fmt: str) -> dict:
    qc = {"quant_method": "fp8" if q.weight_block else "fbgemm_fp8", "fmt": fmt, "activation_scheme": "dynamic",
          "modules_to_not_convert": list(q.ignore)}
    if q.weight_block:
        qc["weight_block_size"] = list(q.weight_block)
    return qc


def write_checkpoint(model, out: str, fmt: str, max_shard_size: str | int = "5GB",
                     dtype: torch.dtype = torch.bfloat16, src: str | None = None, progress: bool = True) -> dict:
    """Write `model` (FP8 modules in format `fmt`) to the new folder `out`. Returns {name: tensor} written."""
    return write_sharded(model, out, checkpoint_tensors(model, dtype), quantization_config(model.quant_config, fmt),
                         max_shard_size, dtype, src, progress)


def write_sharded(model, out: str, tensors: dict[str, torch.Tensor], quant_config: dict,
                  max_shard_size: str | int = "5GB", dtype: torch.dtype = torch.bfloat16, src: str | None = None,
                  progress: bool = True) -> dict[str, torch.Tensor]:
    """`tensors` to the new folder `out` as sharded safetensors with an index (sha256 per shard), the model's
    config.json with `quant_config` as its quantization_config, and the source's side files (tokenizer, ...).
    Returns `tensors`."""
    groups = _shards(tensors, parse_size(max_shard_size))
    os.makedirs(out)
    names = [f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors" for i in range(len(groups))]
    weight_map, digests = {}, {}
    bar = shard_bar(len(groups), progress, "writing shards")
    for file, group in zip(names, groups):
        path = os.path.join(out, file)
        _write_shard({n: tensors[n] for n in group}, path)
        digests[file] = _sha256(path)
        weight_map.update({n: file for n in group})
        bar.update(1)
    bar.close()
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    with open(os.path.join(out, INDEX), "w") as f:
        json.dump({"metadata": {"total_size": total, "sha256": digests}, "weight_map": weight_map}, f, indent=2)
    cfg = model.config.to_hf_multimodal_dict() if model.config.is_multimodal else model.config.to_hf_dict()
    cfg["quantization_config"] = quant_config
    cfg["torch_dtype"] = str(dtype).removeprefix("torch.")
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    if src and os.path.isdir(src):
        for name in _SIDE_FILES:
            if os.path.exists(os.path.join(src, name)):
                shutil.copy2(os.path.join(src, name), os.path.join(out, name))
    return tensors


def _raw(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.uint8) if t.dtype in FP8_DTYPES else t  # float8 has no CPU eq kernel: compare bytes


def verify_checkpoint(folder: str, expected: dict[str, torch.Tensor] | None = None) -> None:
    """Shard sha256s against the index, no fp8 NaN encodings, a full load by our loader, and (with
    `expected`) every tensor bit-identical to what was meant to be written. Raises CheckpointError."""
    from amd_llama4.model.loader import load_model
    from amd_llama4.model.safetensors_io import Checkpoint

    try:
        with open(os.path.join(folder, INDEX)) as f:
            digests = json.load(f).get("metadata", {}).get("sha256", {})
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{folder}/{INDEX}: unreadable ({e})") from None
    for file, want in digests.items():
        got = _sha256(os.path.join(folder, file))
        if got != want:
            raise CheckpointError(f"{os.path.join(folder, file)}: sha256 {got[:12]}... does not match the index "
                                  f"({want[:12]}...): the shard is corrupt")
    ckpt = Checkpoint(folder)
    for name in ckpt.tensors:
        t = ckpt.get(name)
        if t.dtype in FP8_DTYPES:
            bad = sum(int((t.view(torch.uint8) == b).sum()) for b in fp8_spec(t.dtype).nan_bits)
            if bad:
                raise CheckpointError(f"{ckpt.tensors[name].file}: tensor {name!r} has {bad} NaN encodings")
        elif not torch.isfinite(t.float()).all():
            raise CheckpointError(f"{ckpt.tensors[name].file}: tensor {name!r} has NaN or inf values")
        if expected is not None:
            e = expected.get(name)
            if e is None or e.dtype != t.dtype or e.shape != t.shape or not torch.equal(_raw(e), _raw(t)):
                raise CheckpointError(f"{ckpt.tensors[name].file}: tensor {name!r} differs from what was written")
    if expected is not None and set(expected) != set(ckpt.tensors):
        missing = sorted(set(expected) - set(ckpt.tensors))
        raise CheckpointError(f"{folder}: tensor {missing[0]!r} was not written")
    ckpt.close()
    load_model(folder, progress=False)  # every tensor used, every parameter found, shapes and dtypes right


def convert_checkpoint(src: str, out: str, fmt: str, block: int | None = None, max_shard_size: str | int = "5GB",
                       dtype: torch.dtype = torch.bfloat16, progress: bool = True, seed: int | None = None) -> str:
    """src (preset, high-precision or FP8 checkpoint folder) -> FP8 checkpoint in `out` (must not exist).
    A pre-quantised source keeps its scale layout and is only re-expressed in `fmt` (fn -> fnuz exactly).
    Written to `out`.partial, verified, then renamed, so `out` only ever holds a verified checkpoint."""
    from amd_llama4.model.loader import load_model

    tmp = partial_path(out)
    q = QuantConfig(method="fp8", fp8_format=fmt, weight_block=(block, block) if block else None)
    model = load_model(src, quantization=q, progress=progress, seed=seed)
    have = model.quant_config.weight_block
    if have != q.weight_block:
        raise ValueError(f"{src}: already FP8 with weight_block={have}; converting to block={block} would need "
                         "requantisation (convert from the high-precision checkpoint instead)")
    return write_verified(tmp, out, lambda folder: write_checkpoint(model, folder, fmt, max_shard_size, dtype, src,
                                                                     progress))


def partial_path(out: str) -> str:
    """The `.partial` folder a conversion writes before it is verified; refuses an existing `out` or a
    left-over `.partial` (checked before any model is loaded)."""
    if os.path.exists(out):
        raise FileExistsError(f"{out}: already exists; refusing to overwrite (remove it or choose another --out)")
    tmp = out.rstrip("/") + ".partial"
    if os.path.exists(tmp):
        raise FileExistsError(f"{tmp}: left over from an interrupted conversion; remove it first")
    return tmp


def write_verified(tmp: str, out: str, write) -> str:
    """write(tmp) -> {name: tensor} written; then verify_checkpoint and rename tmp -> out, so `out` only
    ever holds a verified checkpoint (tmp is removed on any failure)."""
    try:
        verify_checkpoint(tmp, write(tmp))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    os.rename(tmp, out)
    return out


