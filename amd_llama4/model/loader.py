"""Build a model from a preset or a Hugging Face checkpoint folder.

Accepted checkpoint layouts: one file or shards; names with or without `language_model.`;
fused experts (`experts.gate_up_proj` [E, H, 2I], `experts.down_proj` [E, I, H]) or one tensor per
expert (`experts.{i}.{gate,up,down}_proj.weight`, nn.Linear [out, in] layout). Every model
parameter must come from the checkpoint with the right shape, and every text tensor in the
checkpoint must be used: anything else is an error naming the tensor and the file.
"""
from __future__ import annotations

import os
import re

import torch

from amd_llama4.config import PRESETS, Llama4Config, QuantConfig, is_preset, preset
from amd_llama4.model.llama4 import Llama4ForCausalLM
from amd_llama4.model.safetensors_io import Checkpoint, CheckpointError, shard_bar
from amd_llama4.parallel.tp import SINGLE, Parallel

_PREFIXES = ("", "language_model.")
# Tensors of other modalities in multimodal checkpoints: present, legitimately unused here.
_OTHER_MODALITIES = ("vision_model.", "multi_modal_projector.")
_FUSED = re.compile(r"(.*\.feed_forward\.experts)\.(gate_up_proj|down_proj)(_scale)?$")
# FP8 KV-cache scales some checkpoints carry (per tensor or per KV head).
_KV_SCALE = re.compile(r"model\.layers\.(\d+)\.self_attn\.(?:attn\.)?([kv])_scale$")
_FP8 = (torch.float8_e4m3fn, torch.float8_e4m3fnuz)


def _bytes_op(fn, tensors: list[torch.Tensor]) -> torch.Tensor:
    """cat/stack/transpose for float8 too (no CPU kernels for them): operate on the raw bytes."""
    if tensors[0].dtype in _FP8:
        return fn([t.view(torch.uint8) for t in tensors]).view(tensors[0].dtype)
    return fn(tensors)


def build_model(cfg: Llama4Config, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
                fp8: tuple[QuantConfig, str] | None = None, parallel: Parallel = SINGLE) -> Llama4ForCausalLM:
    """An uninitialised model on `device` (built on the meta device: no wasted init). With `fp8`
    (QuantConfig, stored format): FP8 modules where a pre-quantised checkpoint has fp8 tensors."""
    with torch.device("meta"):
        model = Llama4ForCausalLM(cfg, parallel)
    model = model.to(dtype)
    if fp8 is not None:
        from amd_llama4.quant.fp8 import fp8_skeleton

        fp8_skeleton(model, fp8[0], fp8[1])
    return model.to_empty(device=device).eval()


class _Resolver:
    """Finds the checkpoint tensor(s) for one model parameter name."""

    def __init__(self, ckpt: Checkpoint):
        self.ckpt = ckpt
        self.used: set[str] = set()

    def _find(self, name: str) -> str | None:
        for p in _PREFIXES:
            for n in (name, name + "_inv") if name.endswith(".weight_scale") else (name,):
                if p + n in self.ckpt:  # HF fine-grained FP8 calls block scales `weight_scale_inv`
                    return p + n
        return None

    def where(self, name: str) -> str:
        """Which file a parameter comes from (for grouping the loading by shard)."""
        src = self._find(name) or self._find(self._per_expert_names(name)[0][0] if _FUSED.match(name) else name)
        return self.ckpt.tensors[src].file if src else ""

    def _per_expert_names(self, name: str) -> list[list[str]]:
        base, kind, scale = _FUSED.match(name).groups()
        parts = ("gate_proj", "up_proj") if kind == "gate_up_proj" else ("down_proj",)
        suffix = "weight_scale" if scale else "weight"
        out, i = [], 0
        while self._find(f"{base}.{i}.{parts[0]}.{suffix}"):
            out.append([f"{base}.{i}.{p}.{suffix}" for p in parts])
            i += 1
        return out or [[f"{base}.0.{p}.{suffix}" for p in parts]]

    def _read(self, name: str) -> torch.Tensor:
        src = self._find(name)
        self.used.add(src)
        return self.ckpt.get(src)

    def load(self, name: str, expect: torch.Size, shard=None) -> torch.Tensor:
        """The full tensor `name` of shape `expect`, or only this rank's part of it (`shard`)."""
        if self._find(name) is not None and shard is not None:  # read only the slice, lazily
            src = self._find(name)
            self.used.add(src)
            lazy = self.ckpt.slice(src)
            if tuple(lazy.get_shape()) != tuple(expect):
                raise CheckpointError(f"{self.ckpt.tensors[src].file}: tensor {src!r} has shape "
                                      f"{list(lazy.get_shape())}, expected {list(expect)}")
            return shard(lazy)
        if self._find(name) is not None:
            t, src = self._read(name), self._find(name)
        elif _FUSED.match(name) and self._find(self._per_expert_names(name)[0][0]) is not None:
            groups = self._per_expert_names(name)
            # per-expert [out, in] -> fused input-major: gate_up [E, H, 2I], down [E, I, H]
            # (per-channel scales [out, 1] -> [E, 1, out] by the same transform)
            t = _bytes_op(torch.stack, [_bytes_op(lambda ts: torch.cat(ts, dim=1),
                                                  [_bytes_op(lambda ts: ts[0].t(), [self._read(n)]) for n in g])
                                        for g in groups])
            src = f"{groups[0][0]} .. {groups[-1][-1]}"
        else:
            raise CheckpointError(f"{self.ckpt.folder}: missing tensor {name!r} (also looked for "
                                  f"'language_model.{name}' and per-expert names)")
        if t.shape != expect:
            file = self.ckpt.tensors[self._find(name) or self._find(src.split(' ')[0])].file
            raise CheckpointError(f"{file}: tensor {src!r} has shape {list(t.shape)}, expected {list(expect)}")
        return shard(t) if shard is not None else t

    def kv_scales(self) -> dict[int, dict[str, torch.Tensor]]:
        out: dict[int, dict[str, torch.Tensor]] = {}
        for n in self.ckpt.tensors:
            m = _KV_SCALE.fullmatch(n.removeprefix("language_model."))
            if m:
                self.used.add(n)
                out.setdefault(int(m.group(1)), {})[m.group(2)] = self.ckpt.get(n).float().reshape(-1)
        return out

    def unexpected(self) -> list[str]:
        return sorted(n for n in self.ckpt.tensors
                      if n not in self.used and not any(n.startswith(p) for p in _OTHER_MODALITIES))


def full_shapes(model: Llama4ForCausalLM) -> dict[str, torch.Size]:
    """Parameter shapes of the unsharded model (what a checkpoint holds)."""
    if not model.parallel.enabled:
        return {n: p.shape for n, p in model.named_parameters()}
    with torch.device("meta"):
        full = Llama4ForCausalLM(model.config)
    q = getattr(model, "quant_config", None)
    if q is not None:
        from amd_llama4.quant.fp8 import fp8_skeleton

        fp8_skeleton(full, q, "e4m3fn")
    return {n: p.shape for n, p in full.named_parameters()}


def load_checkpoint(model: Llama4ForCausalLM, folder: str, progress: bool = True) -> Llama4ForCausalLM:
    """Fill `model` from `folder`; a tensor-parallel rank reads only its slices (lazily, per tensor)."""
    from amd_llama4.parallel.tp import shard_fn

    ckpt = Checkpoint(folder)
    res = _Resolver(ckpt)
    params = dict(model.named_parameters())
    shapes = full_shapes(model)
    tied = model.config.tie_word_embeddings
    names = [n for n in params if not (tied and n == "lm_head.weight")]
    by_file: dict[str, list[str]] = {}
    for n in names:
        by_file.setdefault(res.where(n), []).append(n)
    files = sorted(by_file)
    bar = shard_bar(len(files), progress and len(files) > 1, "loading shards")
    with torch.no_grad():
        for f in files:
            for n in by_file[f]:
                p = params[n]
                t = res.load(n, shapes[n], shard_fn(n, model.config, model.parallel))
                if t.shape != p.shape:
                    raise CheckpointError(f"{folder}: slice of {n!r} is {list(t.shape)}, rank expects {list(p.shape)}")
                if (p.dtype in _FP8 and t.dtype != p.dtype) or not t.is_floating_point():
                    raise CheckpointError(f"{res.ckpt.tensors[res._find(n)].file if res._find(n) else folder}: "
                                          f"tensor {n!r} has dtype {t.dtype}, expected "
                                          f"{p.dtype if p.dtype in _FP8 else 'a floating-point dtype'}")
                p.copy_(t if p.dtype in _FP8 else t.to(p.dtype))
            bar.update(1)
    bar.close()
    model.kv_scales = res.kv_scales()
    extra = res.unexpected()
    if extra:
        info = ckpt.tensors[extra[0]]
        raise CheckpointError(f"{info.file}: unexpected tensor {extra[0]!r} (not part of this model"
                              f"{'' if len(extra) == 1 else f'; {len(extra)} such tensors'})")
    ckpt.close()
    return model




def load_model(path_or_preset: str | os.PathLike, *, dtype: torch.dtype = torch.float32,
               device: str | torch.device = "cpu", seed: int = 0, progress: bool = True,
               quantization: str | QuantConfig | None = None, parallel: Parallel = SINGLE) -> Llama4ForCausalLM:
    """A preset name ('tiny-scout', ...) builds random weights from `seed`; a folder loads its
    config.json and safetensors weights. quantization="fp8" (or a QuantConfig) quantises online;
    a checkpoint whose config.json has a quantization_config loads pre-quantised, its fp8 converted
    to the platform's format (e4m3fn -> e4m3fnuz on MI300). `parallel`: this rank's slices only."""
    from amd_llama4.quant.fp8 import convert_model_format, parse_quantization_config, quantize_model, resolve_format

    q = QuantConfig(method="fp8") if quantization == "fp8" else quantization
    if q is not None and not isinstance(q, QuantConfig):
        raise ValueError(f"quantization={quantization!r}: expected None, 'fp8' or a QuantConfig")
    p = os.fspath(path_or_preset)
    if is_preset(p):
        cfg = preset(p)
        model = build_model(cfg, torch.float32, "cpu").init_random(seed)  # the same weights on every rank
        if parallel.enabled:
            model = _slice_model(model, parallel)
        model = model.to(device=device, dtype=dtype).eval()
    elif not os.path.isdir(p):
        raise FileNotFoundError(f"{p!r} is neither a preset ({', '.join(PRESETS)}) nor a checkpoint folder")
    else:
        cfg = Llama4Config.from_pretrained(p)
        pre = parse_quantization_config(cfg.quantization_config)
        if parallel.enabled and ((pre and pre[0].weight_block) or (q and q.weight_block)):
            raise ValueError("block-scaled FP8 with tensor parallelism is not supported yet")
        model = load_checkpoint(build_model(cfg, dtype, device, pre, parallel), p, progress)
        if pre is not None:
            target = resolve_format(q or pre[0])
            convert_model_format(model, target)
            return model
    if q is not None and q.method == "fp8":
        if parallel.enabled and q.weight_block:
            raise ValueError("block-scaled FP8 with tensor parallelism is not supported yet")
        quantize_model(model, q)
    return model


def _slice_model(full: Llama4ForCausalLM, parallel: Parallel) -> Llama4ForCausalLM:
    from amd_llama4.parallel.tp import shard_fn

    local = build_model(full.config, torch.float32, "cpu", parallel=parallel)
    with torch.no_grad():
        for n, p in local.named_parameters():
            cut = shard_fn(n, full.config, parallel)
            src = full.get_parameter(n)
            p.copy_(cut(src) if cut is not None else src)
    return local
