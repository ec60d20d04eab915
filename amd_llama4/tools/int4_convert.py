"""`amd-llama4 convert --to int4`: an int4 model written as a compressed-tensors pack-quantized checkpoint
(the tensors and quantization_config come from quant/compressed_tensors.py), verified, then renamed."""
from __future__ import annotations

import torch

from amd_llama4.config import QuantConfig
from amd_llama4.quant.compressed_tensors import checkpoint_tensors, quantization_config
from amd_llama4.tools.checkpoint_convert import partial_path, write_sharded, write_verified


def write_int4_checkpoint(model, out: str, max_shard_size: str | int = "5GB", dtype: torch.dtype = torch.bfloat16,
                          src: str | None = None, progress: bool = True) -> dict[str, torch.Tensor]:
    """Write int4 `model` to the new folder `out` as a compressed-tensors pack-quantized checkpoint
    (sharded safetensors, index with sha256s, config.json). Returns {name: tensor} written."""
    tensors, ignore = checkpoint_tensors(model, dtype)
    return write_sharded(model, out, tensors, quantization_config(model.quant_config, ignore), max_shard_size, dtype,
                         src, progress)


def convert_checkpoint_int4(src: str, out: str, group_size: int = 128, zero_point: bool = False,
                            max_shard_size: str | int = "5GB", dtype: torch.dtype = torch.bfloat16,
                            progress: bool = True, seed: int | None = None) -> str:
    """src (preset or high-precision checkpoint) -> int4 round-to-nearest compressed-tensors checkpoint in
    `out` (must not exist): written to `out`.partial, verified (sha256s, every tensor as meant, a full load
    by our loader), then renamed. An int4 source is re-written as it is (its own group size)."""
    from amd_llama4.model.loader import load_model

    tmp = partial_path(out)
    q = QuantConfig(method="int4", group_size=group_size, zero_point=zero_point)
    model = load_model(src, quantization=q, progress=progress, seed=seed, dtype=torch.float32, device="cpu")
    have = model.quant_config
    if (have.group_size, have.zero_point) != (group_size, zero_point):
        raise ValueError(f"{src}: already int4 with group_size={have.group_size}, zero_point={have.zero_point}; "
                         "requantising would compound the error (convert from the high-precision checkpoint)")
    return write_verified(tmp, out, lambda folder: write_int4_checkpoint(model, folder, max_shard_size, dtype, src,
                                                                         progress))
