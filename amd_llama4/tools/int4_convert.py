"""`amd-llama4 convert --to int4`: an int4 model written as a compressed-tensors pack-quantized checkpoint
(the tensors and quantization_config come from quant/compressed_tensors.py), verified, then renamed."""
from __future__ import annotations

import torch

from amd_llama4.config import QuantConfig
from amd_llama4.quant.compressed_tensors import checkpoint_tensors, quantization_config


def write_int4_checkpoint(model, out: str, max_shard_size: str | int = "5GB", dtype: torch.dtype = torch.bfloat16,
                          src: str | None = None, progress: bool = True) -> dict[str, torch.Tensor]:
    """Write int4 `model` to the new folder `out` as a compressed-tensors pack-quantized checkpoint
    (sharded safetensors, index with sha256s, config.json). Returns {name: tensor} written."""
    import json
    import os
    import shutil

    from amd_llama4.model.safetensors_io import shard_bar
    from amd_llama4.tools.checkpoint_convert import INDEX, _SIDE_FILES, _sha256, _shards, _write_shard, parse_size

    tensors, ignore = checkpoint_tensors(model, dtype)
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
    cfg["quantization_config"] = quantization_config(model.quant_config, ignore)
    cfg["torch_dtype"] = str(dtype).removeprefix("torch.")
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    if src and os.path.isdir(src):
        for name in _SIDE_FILES:
            if os.path.exists(os.path.join(src, name)):
                shutil.copy2(os.path.join(src, name), os.path.join(out, name))
    return tensors


def convert_checkpoint_int4(src: str, out: str, group_size: int = 128, zero_point: bool = False,
                            max_shard_size: str | int = "5GB", dtype: torch.dtype = torch.bfloat16,
                            progress: bool = True, seed: int | None = None) -> str:
    """src (preset or high-precision checkpoint) -> int4 round-to-nearest compressed-tensors checkpoint in
    `out` (must not exist): written to `out`.partial, verified (sha256s, every tensor as meant, a full load
    by our loader), then renamed. An int4 source is re-written as it is (its own group size)."""
    import os
    import shutil

    from amd_llama4.model.loader import load_model
    from amd_llama4.tools.checkpoint_convert import verify_checkpoint

    if os.path.exists(out):
        raise FileExistsError(f"{out}: already exists; refusing to overwrite (remove it or choose another --out)")
    tmp = out.rstrip("/") + ".partial"
    if os.path.exists(tmp):
        raise FileExistsError(f"{tmp}: left over from an interrupted conversion; remove it first")
    q = QuantConfig(method="int4", group_size=group_size, zero_point=zero_point)
    model = load_model(src, quantization=q, progress=progress, seed=seed, dtype=torch.float32, device="cpu")
    have = model.quant_config
    if (have.group_size, have.zero_point) != (group_size, zero_point):
        raise ValueError(f"{src}: already int4 with group_size={have.group_size}, zero_point={have.zero_point}; "
                         "requantising would compound the error (convert from the high-precision checkpoint)")
    try:
        written = write_int4_checkpoint(model, tmp, max_shard_size, dtype, src, progress)
        verify_checkpoint(tmp, written)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    os.rename(tmp, out)
    return out
