"""Loading int4 models: pre-quantised int4 checkpoints (compressed-tensors, GPTQ), online int4, llama.cpp
Q4_0 GGUF tensors kept as int4, and the int4 meta model for memory figures. The formats and modules live in
quant/ (int4.py, compressed_tensors.py, gptq.py) and gguf/ (int4.py); the loading steps that need the
model builder and `_fill` are here, so quant/ and gguf/ never import the model package."""
from __future__ import annotations

import torch
from torch import nn

from amd_llama4.config import QuantConfig
from amd_llama4.model.offload import offload_skeleton
from amd_llama4.quant import compressed_tensors, gptq
from amd_llama4.quant.int4 import (Int4Source, checkpoint_reader, int4_skeleton, int4_targets,
                                   is_int4_config)


def int4_meta_model(cfg, dtype: torch.dtype, q: QuantConfig | None = None) -> nn.Module:
    """The int4 model on the meta device, for memory figures: int4 where the checkpoint's config (else `q`,
    else online int4 defaults) would put it; a checkpoint's tensors are not consulted."""
    from amd_llama4.model.loader import build_model

    qc = cfg.quantization_config
    if is_int4_config(qc):
        q = gptq.parse(qc)[0] if gptq.is_gptq(qc) else compressed_tensors.parse(qc)
    q = q or QuantConfig(method="int4")
    model = build_model(cfg, dtype, "meta")
    return int4_skeleton(model, q, {n: kind for n, _, kind in int4_targets(model, q, log=False)})


def load_int4(cfg, source, q: QuantConfig | None, dtype: torch.dtype, device: torch.device, parallel,
              label: str, progress: bool, offload: tuple[int, ...] = ()) -> nn.Module:
    """An int4 model on `device` from a pre-quantised int4 checkpoint (cfg.quantization_config; it wins
    over `q`) or, with q.method == 'int4', quantised online from a high-precision source."""
    from amd_llama4.model.loader import _fill, build_model, retie

    if parallel.enabled:
        raise ValueError("int4 with tensor parallelism is not supported yet (load with tensor_parallel_size=1)")
    model = build_model(cfg, dtype, "meta")
    if is_int4_config(cfg.quantization_config):
        reader = checkpoint_reader(cfg.quantization_config, source)
        q = reader.quant_config
        plan = reader.plan(model)
    else:
        reader = None
        plan = {name: kind for name, _, kind in int4_targets(model, q)}
    int4_skeleton(model, q, plan)
    offload_skeleton(model, offload, device)  # --cpu-offload-experts: those experts never touch `device`
    model = retie(model.to_empty(device=device).eval())
    return _fill(model, Int4Source(source, model, plan, q, reader, device, dtype), device, dtype, None, label,
                 progress)


def load_gguf_int4(source, dtype: torch.dtype, device: torch.device, parallel, progress: bool,
                   offload: tuple[int, ...] = ()):
    """The model of GGUFSource `source` with its Q4_0 linears and experts as int4 modules (exact), the
    rest dequantised to `dtype` (as quant/int4.py's load_int4 does for int4 checkpoints)."""
    from amd_llama4.gguf import names
    from amd_llama4.gguf.int4 import GGUFInt4Reader
    from amd_llama4.gguf.reader import GGUFError
    from amd_llama4.model.loader import _fill, build_model, retie

    if parallel.enabled:
        raise ValueError("int4 with tensor parallelism is not supported yet (load with tensor_parallel_size=1)")
    reader = GGUFInt4Reader(source)
    model = build_model(source.config, dtype, "meta")
    plan = reader.plan(model)
    if not plan:
        raise GGUFError(f"{source.path}: quantization='int4' keeps Q4_0 tensors as int4, and this file has no "
                        f"Q4_0 linear or expert tensor (load it without quantization to dequantise)")
    int4_skeleton(model, reader.quant_config, plan)
    offload_skeleton(model, offload, device)
    model = retie(model.to_empty(device=device).eval())
    return _fill(model, Int4Source(source, model, plan, reader.quant_config, reader, device, dtype), device, dtype,
                 None, source.path, progress)
