"""The CPU decode step as one native call (csrc/cpu/decode_step.*): what a HIP/CUDA graph is to the
GPU path. The eager CPU step spends ~40 us of Python per kernel call, ~114 calls per token for an
8-layer model: at batch 1 that is more than the int4 model's whole weight stream. Here the model is
described to the extension once (weight pointers and per-layer flags, read from the modules) and
each decode step is one call that runs the same kernels, with the same roundings, in C++.

Only what the native kernels run is described: float32/bfloat16 activations, dense, int4 (w4a16) or
FP8 (w8a8, per-channel or block scales) projections and routed experts, an unquantised KV cache, one
rank. Anything else (an fp8 KV cache, tensor/expert parallel, offloaded experts, a backend forced by
AMD_LLAMA4_BACKEND) keeps the eager step: `unsupported()` says why."""
from __future__ import annotations

import os

import torch

from amd_llama4.engine.kv_cache import KVCache
from amd_llama4.engine.step_inputs import StepInputs
from amd_llama4.ops import native

_ACT = (torch.float32, torch.bfloat16)


def _ref(t: torch.Tensor, name: str):
    return native._ref(t, name)  # the ref keeps t alive (views such as the experts' scales [E, N])


class Unsupported(Exception):
    """This model (or cache) has something the native step does not run; the message says what."""


def _weight(mod, name: str, dtype: torch.dtype):
    """nn.Linear-like module -> _C.StepWeight (dense in the activation dtype, Int4Linear, FP8Linear)."""
    from amd_llama4.model.llama4 import Linear
    from amd_llama4.quant.fp8 import FP8Linear
    from amd_llama4.quant.int4 import Int4Linear

    w = native._C.StepWeight()
    if type(mod) is Linear:
        if mod.bias is not None:
            raise Unsupported(f"{name} has a bias")
        t = mod.weight
        if t.dtype != dtype or not t.is_contiguous() or t.device.type != "cpu":
            raise Unsupported(f"{name}.weight is {t.dtype} on {t.device} (contiguous={t.is_contiguous()})")
        w.w, (w.N, w.K) = _ref(t, f"{name}.weight"), t.shape
    elif type(mod) is Int4Linear:
        ts = (mod.qweight, mod.scales, mod.zeros)
        if not all(t is None or (t.is_contiguous() and t.device.type == "cpu") for t in ts):
            raise Unsupported(f"{name}: int4 tensors must be contiguous CPU tensors")
        w.int4, w.q, w.s, w.G = True, _ref(mod.qweight, f"{name}.qweight"), _ref(mod.scales, f"{name}.scales"), \
            mod.group_size
        if mod.zeros is not None:
            w.z = _ref(mod.zeros, f"{name}.zeros")
        w.N, w.K = mod.out_features, mod.in_features
    elif type(mod) is FP8Linear and hasattr(native._C, "fp8_gemm"):
        for t in (mod.weight, mod.weight_scale):
            if not t.is_contiguous() or t.device.type != "cpu":
                raise Unsupported(f"{name}: fp8 tensors must be contiguous CPU tensors")
        w.fp8, w.q, w.s = True, _ref(mod.weight, f"{name}.weight"), _ref(mod.weight_scale, f"{name}.weight_scale")
        w.block_n, w.block_k = mod.block or (0, 0)
        w.N, w.K = mod.out_features, mod.in_features
    else:
        raise Unsupported(f"{name} is a {type(mod).__name__}")
    return w


def _experts(mod, name: str, dtype: torch.dtype):
    from amd_llama4.model.llama4 import Experts
    from amd_llama4.quant.fp8 import FP8Experts
    from amd_llama4.quant.int4 import Int4Experts

    e = native._C.StepExperts()
    if type(mod) is Experts:
        same = mod.gate_up_proj.is_contiguous() == mod.down_proj.is_contiguous()
        for attr in ("gate_up_proj", "down_proj"):
            t = getattr(mod, attr)
            if t.dtype != dtype or not (t.is_contiguous() or native.output_major(t)) or not same or t.device.type != "cpu":
                raise Unsupported(f"{name}.{attr} is {t.dtype} on {t.device} with strides {t.stride()} "
                                  "(both contiguous or both output-major)")
        e.gate_up, e.down = _ref(mod.gate_up_proj, f"{name}.gate_up_proj"), _ref(mod.down_proj, f"{name}.down_proj")
    elif type(mod) is FP8Experts:  # w8a8: fused_moe with per-channel scales [E, 1, N] read as [E, N]
        ts = (mod.gate_up_proj, mod.down_proj, mod.gate_up_proj_scale, mod.down_proj_scale)
        if not all(t.is_contiguous() and t.device.type == "cpu" for t in ts) or mod.gate_up_proj_scale.dtype != torch.float32:
            raise Unsupported(f"{name}: fp8 experts must be contiguous CPU tensors with fp32 scales")
        E = mod.gate_up_proj.shape[0]
        e.gate_up, e.down = _ref(mod.gate_up_proj, f"{name}.gate_up_proj"), _ref(mod.down_proj, f"{name}.down_proj")
        e.gate_up_scale = _ref(mod.gate_up_proj_scale.view(E, -1), f"{name}.gate_up_proj_scale")
        e.down_scale = _ref(mod.down_proj_scale.view(E, -1), f"{name}.down_proj_scale")
    elif type(mod) is Int4Experts:
        e.int4, e.G = True, mod.group_size
        for attr in ("w13_q", "w13_s", "w13_z", "w2_q", "w2_s", "w2_z"):
            t = getattr(mod, attr)
            if t is None:
                continue
            if not t.is_contiguous() or t.device.type != "cpu":
                raise Unsupported(f"{name}.{attr} must be a contiguous CPU tensor")
            setattr(e, attr, _ref(t, f"{name}.{attr}"))
    else:
        raise Unsupported(f"{name} is a {type(mod).__name__}")
    return e


def _layer(model, cache: KVCache, i: int, dtype: torch.dtype):
    from amd_llama4.model.llama4 import MLP, MoE

    blk = model.model.layers[i]
    att, ff, p = blk.self_attn, blk.feed_forward, f"model.layers.{i}"
    L = native._C.StepLayer()
    for attr in ("in_norm", "post_norm"):
        norm = blk.input_layernorm if attr == "in_norm" else blk.post_attention_layernorm
        if norm.weight.dtype != dtype or not norm.weight.is_contiguous():
            raise Unsupported(f"{p} norm weight is {norm.weight.dtype}, not {dtype}")
        setattr(L, attr, _ref(norm.weight, f"{p}.{attr}"))
    L.qkv = [_weight(getattr(att, n), f"{p}.self_attn.{n}", dtype) for n in ("q_proj", "k_proj", "v_proj")]
    L.o = _weight(att.o_proj, f"{p}.self_attn.o_proj", dtype)
    L.rope, L.chunk, L.scale = att.use_rope, att.chunk_size or 0, att.scale
    L.qk_norm_eps = att.qk_norm_eps or 0.0
    if att.temperature is not None:
        L.floor_scale, L.attn_scale = float(att.temperature[0]), float(att.temperature[1])
    L.kind = cache.kinds.index(cache.kind_of_layer[i])
    k, v, _, _ = cache.paged(i)
    L.k_cache, L.v_cache = _ref(k, f"{p} k_cache"), _ref(v, f"{p} v_cache")
    mlp = ff.shared_expert if type(ff) is MoE else ff
    if type(mlp) is not MLP:
        raise Unsupported(f"{p}.feed_forward is a {type(ff).__name__}")
    L.gate_up = [_weight(getattr(mlp, n), f"{p}.mlp.{n}", dtype) for n in ("gate_proj", "up_proj")]
    L.down = _weight(mlp.down_proj, f"{p}.mlp.down_proj", dtype)
    if type(ff) is MoE:
        L.moe, L.top_k = True, ff.top_k
        L.router = _weight(ff.router, f"{p}.feed_forward.router", dtype)
        L.experts = _experts(ff.experts, f"{p}.feed_forward.experts", dtype)
    return L


def unsupported(model, cache: KVCache) -> str | None:
    """Why the native decode step cannot run this model and cache (None: it can)."""
    try:
        CpuDecodeStep(model, cache, 1)
    except Unsupported as e:
        return str(e)
    return None


def _check(model, cache: KVCache) -> None:
    if not native.available() or not hasattr(native._C, "DecodeStep"):
        raise Unsupported(f"the native extension is not built ({native.IMPORT_ERROR})")
    forced = os.environ.get("AMD_LLAMA4_BACKEND", "")
    if forced not in ("", "native"):
        raise Unsupported(f"AMD_LLAMA4_BACKEND={forced} asks for another backend")
    if model.parallel.enabled:
        raise Unsupported("tensor/expert parallel")
    emb = model.model.embed_tokens.weight
    if emb.device.type != "cpu" or emb.dtype not in _ACT:
        raise Unsupported(f"activations are {emb.dtype} on {emb.device}")
    if cache.fp8:
        raise Unsupported("an fp8 KV cache")


class CpuDecodeStep:
    """run(inputs) -> final-norm hidden states [R, H] of a decode step's R rows (one token each)."""

    def __init__(self, model, cache: KVCache, max_rows: int):
        _check(model, cache)
        dtype = model.model.embed_tokens.weight.dtype
        text, cfg = model.model, model.config
        self.kinds = list(cache.kinds)
        self.hidden, self.dtype = cfg.hidden_size, dtype
        layers = [_layer(model, cache, i, dtype) for i in range(len(text.layers))]
        if not text.norm.weight.is_contiguous() or text.norm.weight.dtype != dtype:
            raise Unsupported(f"model.norm.weight is {text.norm.weight.dtype}, not {dtype}")
        self._keep = text.inv_freq.float().contiguous()  # the step reads it through a raw pointer
        self.step = native._C.DecodeStep(
            _ref(text.embed_tokens.weight, "embed_tokens"), _ref(text.norm.weight, "model.norm.weight"),
            _ref(self._keep, "inv_freq"), float(cfg.rms_norm_eps), text.layers[0].self_attn.n_heads,
            text.layers[0].self_attn.n_kv, cfg.head_dim, int(max_rows), layers)
        self.vocab = None  # the LM head joins the step when it is a plain dense Linear (it is in every
        try:  # checkpoint we load; a quantised head leaves compute_logits to the model)
            self.step.set_lm_head(_weight(model.lm_head, "lm_head", dtype))
            self.vocab = model.lm_head.out_features
        except Unsupported:
            pass

    @classmethod
    def build(cls, model, cache: KVCache, max_rows: int) -> "CpuDecodeStep | None":
        """The native step, or None when the model needs the eager one (unsupported() says why)."""
        try:
            return cls(model, cache, max_rows)
        except Unsupported:
            return None

    def run(self, x: StepInputs, logits: bool = False) -> torch.Tensor:
        """x: host inputs of a decode step (one token per row, no padding rows) -> final-norm hidden
        states [R, H], or with `logits` (needs self.vocab) the model's compute_logits of them: fp32 [R, V]."""
        R = x.ids.shape[0]
        if x.batch != R or x.src is not None:
            raise ValueError(f"cpu decode step: {R} tokens in {x.batch} rows is not an unpadded decode step")
        t = native._C.StepTensors()
        t.ids, t.q_pos, t.cu_seqlens = _ref(x.ids, "ids"), _ref(x.q_pos, "q_pos"), _ref(x.cu_seqlens, "cu_seqlens")
        t.tables = [_ref(x.tables[k], f"tables[{k}]") for k in self.kinds]
        t.seq_lens = [_ref(x.seq_lens[k], f"seq_lens[{k}]") for k in self.kinds]
        t.first_pos = [_ref(x.first_pos[k], f"first_pos[{k}]") for k in self.kinds]
        t.slots = [_ref(x.slots[k], f"slots[{k}]") for k in self.kinds]
        out = torch.empty(R, self.hidden, dtype=self.dtype)
        if not logits:
            self.step.run(t, _ref(out, "out"))
            return out
        lg = torch.empty(R, self.vocab, dtype=torch.float32)
        self.step.run(t, _ref(out, "out"), _ref(lg, "logits"))
        return lg
