"""Build a model from a preset or a Hugging Face checkpoint folder, straight onto its device.

The model is built on the meta device, given its final storage on the target device (fp8 where it
will be fp8), then filled tensor by tensor: each tensor is read on the host, moved to the device,
cast or quantised there, and dropped. Peak device memory is the final model plus one tensor in
flight (never a full-precision copy of the model). On device="meta" nothing is read: every name,
shape and dtype is checked against the safetensors headers only.
Every model parameter must come from the checkpoint with the right shape, and every tensor in the
checkpoint must be used (layouts.py says which layouts are read): anything else is an error naming
the tensor and the file. A checkpoint whose config has a vision_config and whose tensors hold the
vision tower loads as Llama4ForConditionalGeneration (the tower replicated on every tensor-parallel
rank, never FP8); any other as Llama4ForCausalLM, vision tensors unused.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path

import torch

from amd_llama4.config import PRESETS, Llama4Config, QuantConfig, is_preset, preset
from amd_llama4.model.layouts import CheckpointSource
from amd_llama4.model.llama4 import Experts, Llama4ForCausalLM
from amd_llama4.model.multimodal import VISION_PREFIXES, Llama4ForConditionalGeneration, is_vision_param
from amd_llama4.model.safetensors_io import Checkpoint, CheckpointError, shard_bar
from amd_llama4.parallel.tp import SINGLE, Parallel, shard_fn
from amd_llama4.platform import FP8_DTYPES, resolve_device, resolve_dtype

_log = logging.getLogger("amd_llama4")


def build_model(cfg: Llama4Config, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
                fp8: tuple[QuantConfig, str] | None = None, parallel: Parallel = SINGLE,
                offload: tuple[int, ...] = ()) -> Llama4ForCausalLM:
    """An uninitialised model on `device` (built on the meta device: no wasted init): multimodal when
    cfg.vision_config is set. With `fp8` (QuantConfig, format): FP8 modules in place of the linears and
    experts it quantises (never the vision tower's)."""
    with torch.device("meta"):
        model = (Llama4ForConditionalGeneration if cfg.is_multimodal else Llama4ForCausalLM)(cfg, parallel)
    model = model.to(dtype)
    if fp8 is not None:
        from amd_llama4.quant.fp8 import fp8_skeleton

        q = fp8[0]
        if cfg.is_multimodal:  # the tower stays in high precision, as in peers and Meta's FP8 release
            q = dataclasses.replace(q, ignore=[*q.ignore, *(p.rstrip(".") for p in VISION_PREFIXES)])
        fp8_skeleton(model, q, fp8[1])
    from amd_llama4.model.offload import moe_blocks, offload_skeleton

    # fp32|bf16 routed experts that live in host memory (a CPU model's, offloaded ones) are stored
    # output-major: the CPU kernels then stream one contiguous weight row per output (Experts)
    on_host = torch.device(device).type == "cpu"
    for i, block in moe_blocks(model).items():
        if type(block.experts) is Experts and (on_host or i in offload):
            block.experts.output_major_()
    if offload:  # experts of these MoE layers materialise in host memory, never on `device` (model/offload.py)
        offload_skeleton(model, offload, device)
    return retie(model.to_empty(device=device).eval())  # to_empty keeps each parameter's strides


def retie(model: Llama4ForCausalLM) -> Llama4ForCausalLM:
    """to_empty() gives every parameter its own storage, which unties a tied lm_head from the embedding
    (and _fill skips lm_head.weight for tied configs): tie it again."""
    if model.config.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    return model


def _full_shapes(cfg: Llama4Config, q: QuantConfig | None) -> dict[str, torch.Size]:
    """Parameter shapes of the unsharded model (what a checkpoint holds); with `q`, its FP8 modules'."""
    return {n: p.shape for n, p in build_model(cfg, device="meta", fp8=(q, "e4m3fn") if q else None)
            .named_parameters()}


# Briefly trained text weights of the tiny presets (scripts/train_tiny.py; NOTICE there).
TRAINED_WEIGHTS = Path(__file__).resolve().parents[1] / "assets" / "tiny_weights"


class _PresetSource:
    """A preset's weights, handed out like a checkpoint's (the same on every rank): random from `seed`,
    or with seed=None the briefly trained text weights shipped for it (tiny presets; the vision tower
    stays random), so a first chat answers in words."""

    def __init__(self, cfg: Llama4Config, seed: int | None, meta: bool, name: str = ""):
        self.model = build_model(cfg, device="meta" if meta else "cpu")
        if meta:
            return
        self.model.init_random(0 if seed is None else seed)
        trained = TRAINED_WEIGHTS / f"{name}.safetensors"
        if seed is None and trained.is_file():
            from safetensors.torch import load_file

            with torch.no_grad():
                for n, t in load_file(str(trained)).items():
                    self.model.get_parameter(n).copy_(t)

    def load(self, name: str, expect: torch.Size, shard=None) -> torch.Tensor:
        t = self.model.get_parameter(name).detach()
        return shard(t) if shard is not None else t

    def file_of(self, name: str) -> str:
        return "preset"

    def where(self, name: str) -> str:
        return ""

    def kv_scales(self) -> dict:
        return {}

    def unexpected(self) -> list[str]:
        return []

    def close(self) -> None:
        self.model = None


def _online_targets(model: Llama4ForCausalLM, q: QuantConfig | None) -> dict[str, str]:
    """module name -> 'linear' | 'experts' for the FP8 modules quantised while loading."""
    if q is None:
        return {}
    from amd_llama4.quant.fp8 import FP8Experts, FP8Linear

    return {n: "linear" if isinstance(m, FP8Linear) else "experts" for n, m in model.named_modules()
            if isinstance(m, (FP8Linear, FP8Experts))}


def _copy_into(p: torch.Tensor, t: torch.Tensor) -> None:
    """p.copy_(t), casting and moving in one go (no second full-size copy on the device). Output-major
    experts (host memory) from a same-dtype contiguous source: one expert at a time as 2-d transposes,
    which torch copies in cache blocks (measured 1.7x faster than the strided 3-d copy)."""
    from amd_llama4.ops.native import output_major

    if p.device.type == "cpu" and output_major(p) and t.dtype == p.dtype and t.is_contiguous():
        for e in range(p.shape[0]):
            p[e].t().copy_(t[e].t())
    else:
        p.copy_(t)


def _fill(model: Llama4ForCausalLM, source, device: torch.device, dtype: torch.dtype,
          online: QuantConfig | None, label: str, progress: bool) -> Llama4ForCausalLM:
    """Fill every parameter of `model` (already on `device`) from `source`, one tensor at a time.
    `online`: the FP8 modules are quantised here from the source's tensors, cast to `dtype` first
    (as quantising the loaded `dtype` model would)."""
    from amd_llama4 import ops

    cfg, par = model.config, model.parallel
    targets = _online_targets(model, online)
    params = dict(model.named_parameters())
    shapes = ({n: p.shape for n, p in params.items()} if not par.enabled and not online
              else _full_shapes(cfg, None if online else getattr(model, "quant_config", None)))
    names = [n for n in params if not (cfg.tie_word_embeddings and n == "lm_head.weight")]
    by_file: dict[str, list[str]] = {}
    for n in names:
        by_file.setdefault(source.where(n), []).append(n)
    bar = shard_bar(len(by_file), progress and len(by_file) > 1, "loading shards")
    with torch.no_grad():
        for f in sorted(by_file):
            for n in by_file[f]:
                mod, _, leaf = n.rpartition(".")
                kind = targets.get(mod)
                if kind is not None and leaf.endswith("_scale"):
                    continue  # written with its weight below
                p = params[n]
                t = source.load(n, shapes[n], None if is_vision_param(n) else shard_fn(n, cfg, par))
                if kind is not None:  # full precision in, fp8 + scale out, on the device
                    m = model.get_submodule(mod)
                    ps = params[n + "_scale" if kind == "experts" else mod + ".weight_scale"]
                    gran = "col" if kind == "experts" else ("block" if m.block else "row")
                    if kind == "experts" and t.shape[0] != p.shape[0]:
                        raise CheckpointError(f"{label}: {n!r} has {t.shape[0]} experts, rank expects {p.shape[0]}")
                    # experts one at a time: in flight is one expert in full precision and the
                    # quantiser's temporaries, never the whole [E, H, 2I] tensor
                    pieces = ([(p[e], ps[e], t[e]) for e in range(p.shape[0])] if kind == "experts"
                              else [(p, ps, t)])
                    for dst, dst_scale, src in pieces:
                        wq, ws = ops.quantize_fp8(src.to(device=device, dtype=dtype), m.fmt, gran,
                                                  None if kind == "experts" else m.block)
                        if wq.shape != dst.shape or ws.shape != dst_scale.shape:
                            raise CheckpointError(f"{label}: {n!r} quantised to {list(wq.shape)} / scale "
                                                  f"{list(ws.shape)}, rank expects {list(dst.shape)} / "
                                                  f"{list(dst_scale.shape)}")
                        dst.copy_(wq)
                        dst_scale.copy_(ws)
                    continue
                if tuple(t.shape) != tuple(p.shape):
                    raise CheckpointError(f"{label}: slice of {n!r} is {list(t.shape)}, rank expects {list(p.shape)}")
                if ((p.dtype in FP8_DTYPES and t.dtype != p.dtype)
                        or (not t.is_floating_point() and not p.dtype == t.dtype == torch.uint8)):  # uint8: int4
                    raise CheckpointError(f"{source.file_of(n)}: tensor {n!r} has dtype {t.dtype}, expected "
                                          f"{p.dtype if p.dtype in FP8_DTYPES else 'a floating-point dtype'}")
                _copy_into(p, t)
            bar.update(1)
    bar.close()
    model.kv_scales = source.kv_scales()
    extra = source.unexpected()
    if extra:
        raise CheckpointError(f"{source.file_of(extra[0])}: unexpected tensor {extra[0]!r} (not part of this model"
                              f"{'' if len(extra) == 1 else f'; {len(extra)} such tensors'})")
    source.close()
    return model


def load_checkpoint(model: Llama4ForCausalLM, folder: str, progress: bool = True) -> Llama4ForCausalLM:
    """Fill `model` (on any device; on meta only the headers are checked) from `folder`; a
    tensor-parallel rank reads only its slices (lazily, per tensor)."""
    device = next(model.parameters()).device
    dtype = next(p for p in model.parameters() if p.dtype not in FP8_DTYPES).dtype
    source = CheckpointSource(Checkpoint(folder), meta=device.type == "meta",
                              text_only=not isinstance(model, Llama4ForConditionalGeneration))
    return _fill(model, source, device, dtype, None, folder, progress)


def _quant_arg(quantization: str | QuantConfig | None) -> QuantConfig | None:
    q = QuantConfig(method=quantization) if quantization in ("fp8", "int4") else quantization
    if q is not None and not isinstance(q, QuantConfig):
        raise ValueError(f"quantization={quantization!r}: expected None, 'fp8', 'int4' or a QuantConfig")
    return q if q is not None and q.method in ("fp8", "int4") else None


def load_model(path_or_preset: str | os.PathLike, *, dtype: str | torch.dtype = "auto",
               device: str | torch.device = "auto", seed: int | None = None, progress: bool = True,
               quantization: str | QuantConfig | None = None, parallel: Parallel = SINGLE,
               cpu_offload_experts: str | int | None = None) -> Llama4ForCausalLM:
    """A preset name ('tiny-scout', ...): the shipped trained weights (tiny presets) or, with `seed`,
    random weights from that seed (seed 0 where nothing is shipped); a folder loads its
    config.json and safetensors weights. device="auto": the GPU torch sees, else the CPU; "meta":
    shapes only, nothing read. quantization="fp8" (or a QuantConfig) quantises each weight while it
    is loaded; a checkpoint whose config.json has a quantization_config loads pre-quantised, its fp8
    converted to the platform's format (e4m3fn -> e4m3fnuz on MI300). `parallel`: this rank's slices.
    dtype="auto": platform.resolve_dtype (the checkpoint's torch_dtype on GPU, fp32 on CPU)."""
    from amd_llama4.quant.fp8 import convert_model_format, parse_quantization_config, resolve_format
    from amd_llama4.model.loader_int4 import load_int4
    from amd_llama4.quant.int4 import is_int4_config

    device = resolve_device(device)
    q = _quant_arg(quantization)
    p = os.fspath(path_or_preset)
    pre = None
    if is_preset(p):
        cfg = preset(p)
        source = _PresetSource(cfg, seed, meta=device.type == "meta", name=p)
    elif p.lower().endswith(".gguf"):  # llama.cpp's GGUF (amd_llama4/gguf): config from its metadata
        from amd_llama4.gguf import GGUFSource

        source = GGUFSource(p, meta=device.type == "meta")
        cfg = source.config
        if q is not None and q.method == "int4" and source.has_type("Q4_0"):  # kept bit for bit: gguf/int4.py
            from amd_llama4.model.loader_int4 import load_gguf_int4
            from amd_llama4.model.offload import parse_offload

            return load_gguf_int4(source, resolve_dtype(dtype, device, cfg), device, parallel, progress,
                                  parse_offload(cpu_offload_experts, cfg))
    elif not os.path.isdir(p):
        raise FileNotFoundError(f"{p!r} is neither a preset ({', '.join(PRESETS)}) nor a checkpoint folder")
    else:
        cfg = Llama4Config.from_pretrained(p)
        pre = parse_quantization_config(cfg.quantization_config)
        ckpt = Checkpoint(p)
        if cfg.is_multimodal and not CheckpointSource(ckpt).has_vision():
            _log.info("%s: config.json has a vision_config but the checkpoint no vision tower "
                      "(no 'vision_model.patch_embedding.linear.weight'): loading the text model only", p)
            cfg = dataclasses.replace(cfg, vision_config=None)
        source = CheckpointSource(ckpt, meta=device.type == "meta", text_only=not cfg.is_multimodal)
    if (q is not None and q.method == "int4") or is_int4_config(cfg.quantization_config):  # quant/int4.py
        if pre is not None or (q is not None and q.method != "int4"):
            raise ValueError(f"{p}: quantization={q.method!r} on a pre-quantised "
                             f"{'FP8' if pre is not None else 'int4'} checkpoint is not supported")
        from amd_llama4.model.offload import parse_offload

        return load_int4(cfg, source, q, resolve_dtype(dtype, device, cfg), device, parallel, p, progress,
                         parse_offload(cpu_offload_experts, cfg))
    if parallel.enabled and ((pre and pre[0].weight_block) or (q and q.weight_block)):
        raise ValueError("block-scaled FP8 with tensor parallelism is not supported yet")
    online = q if pre is None else None
    skeleton = pre if pre is not None else ((q, resolve_format(q)) if q is not None else None)
    dtype = resolve_dtype(dtype, device, cfg)
    # cpu_offload_experts: 'all' | N (the first N MoE layers): those layers' routed experts are
    # filled in host memory and run on the host even when device is a GPU (model/offload.py)
    from amd_llama4.model.offload import parse_offload

    model = build_model(cfg, dtype, device, skeleton, parallel, parse_offload(cpu_offload_experts, cfg))
    _fill(model, source, device, dtype, online, p, progress)
    if pre is not None:
        convert_model_format(model, resolve_format(q or pre[0]))
    return model
