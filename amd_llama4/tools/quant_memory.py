"""Weight and KV-cache memory of a model configuration, computed on the meta device (no weights are
allocated, so `maverick` costs nothing): bytes by component and KV bytes per token."""
from __future__ import annotations

import os

import torch

from amd_llama4.config import Llama4Config, QuantConfig, load_config


def meta_model(cfg: Llama4Config, dtype: torch.dtype, quantization: str | None = None, fmt: str | None = None):
    """The model on the meta device, with FP8 (int4) modules where a checkpoint's quantization_config or
    quantization='fp8' ('int4') puts them."""
    from amd_llama4.model.loader import build_model
    from amd_llama4.quant.fp8 import fp8_skeleton, parse_quantization_config, resolve_format
    from amd_llama4.model.loader_int4 import int4_meta_model
    from amd_llama4.quant.int4 import is_int4_config

    if is_int4_config(cfg.quantization_config) or quantization == "int4":  # an int4 checkpoint, or online int4
        return int4_meta_model(cfg, dtype)
    pre = parse_quantization_config(cfg.quantization_config)
    model = build_model(cfg, dtype, "meta", pre)
    if pre is None and quantization == "fp8":
        q = QuantConfig(method="fp8", fp8_format=fmt)
        fp8_skeleton(model, q, resolve_format(q))
    return model


def kv_bytes_per_token(cfg: Llama4Config, kv_cache_dtype: str, dtype: torch.dtype) -> dict[str, int]:
    """K and V of one token: over all layers (a context within one attention chunk) and over the
    global (NoPE) layers only (what each token beyond a chunk adds: chunked layers keep one chunk)."""
    if kv_cache_dtype == "fp8":  # one byte a value plus an fp32 scale per token and KV head (engine/kv_cache.py)
        per_layer = 2 * cfg.num_key_value_heads * (cfg.head_dim + 4)
    else:
        per_layer = 2 * cfg.num_key_value_heads * cfg.head_dim * torch.empty(0, dtype=dtype).element_size()
    chunked = sum(1 for i in range(cfg.num_hidden_layers) if cfg.uses_rope(i) and cfg.attention_chunk_size)
    return {"kv_bytes_per_token": per_layer * cfg.num_hidden_layers,
            "kv_bytes_per_token_global_layers": per_layer * (cfg.num_hidden_layers - chunked)}


def memory_report(path_or_preset: str, dtype: torch.dtype = torch.bfloat16, quantization: str | None = None,
                  kv_cache_dtype: str | None = None) -> dict:
    """{'weights': {component: bytes, 'total': ...}, 'kv': {...}, 'quantized': bool}.
    KV defaults to fp8 when the weights are FP8 (the deployment pairing), else the model dtype."""
    from amd_llama4.quant.fp8 import weight_bytes_by_component

    cfg = load_config(path_or_preset)
    model = meta_model(cfg, dtype, quantization)
    quantized = hasattr(model, "quant_config")
    kv = kv_cache_dtype or ("fp8" if quantized else "auto")
    return {"model": os.fspath(path_or_preset), "dtype": str(dtype).removeprefix("torch."), "quantized": quantized,
            "weights": weight_bytes_by_component(model), "kv_cache_dtype": kv, "kv": kv_bytes_per_token(cfg, kv, dtype)}
