"""int4 weight-only (w4a16) modules, online round-to-nearest quantisation and int4 loading.

Quantised, as FP8 does: attention q/k/v/o, dense MLP and shared-expert projections (Int4Linear) and
the routed experts (Int4Experts); router, norms, embeddings, lm_head, the vision tower and anything in
QuantConfig.ignore stay in high precision. A module whose input width is not a multiple of the group
size also stays in high precision (logged): the kernels take whole groups only.
Layout (ops/int4.py): qweight uint8 [N, K/2] (column 2j low nibble, 2j+1 high), scales [N, K/G] in the
model dtype, zeros uint8 [N, K/G] or None (symmetric: zero point 8); W = (q - z) * s.
Loading (`load_int4`) builds the model on the meta device, swaps in empty int4 modules and fills
them tensor by tensor through the ordinary loader, from a pre-quantised checkpoint (a reader from
quant/compressed_tensors.py or quant/gptq.py converts each module's tensors to our layout) or
online from a high-precision source, one expert at a time: never a full dequantised model.
"""
from __future__ import annotations

import logging

import torch
import torch.nn as nn

from amd_llama4.config import QuantConfig
from amd_llama4.quant.fp8 import _LINEAR_NAMES, _VISION_PREFIXES, _ignored, _replace

_log = logging.getLogger("amd_llama4")


def _frozen(t: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(t, requires_grad=False)


def _ops():
    from amd_llama4.ops import int4  # helper module of the int4 kernels (torch reference + native/Triton)

    return int4


class Int4Linear(nn.Module):
    """y = x @ W^T, W [N, K] as int4 groups of `group_size` input columns."""

    def __init__(self, in_features: int, out_features: int, group_size: int, zero_point: bool,
                 scale_dtype: torch.dtype = torch.float32):
        super().__init__()
        if in_features % group_size:
            raise ValueError(f"Int4Linear: in_features {in_features} is not a multiple of group_size {group_size}")
        self.in_features, self.out_features, self.group_size = in_features, out_features, group_size
        groups = in_features // group_size
        self.qweight = _frozen(torch.empty(out_features, in_features // 2, dtype=torch.uint8))
        self.scales = _frozen(torch.empty(out_features, groups, dtype=scale_dtype))
        self.zeros = _frozen(torch.empty(out_features, groups, dtype=torch.uint8)) if zero_point else None

    @classmethod
    def from_linear(cls, lin: nn.Module, q: QuantConfig) -> "Int4Linear":
        w = lin.weight.detach()
        m = cls(lin.in_features, lin.out_features, q.group_size, q.zero_point, w.dtype).to(w.device)
        m.load_quantized(*_ops().quantize_int4(w, q.group_size, not q.zero_point))
        return m

    def load_quantized(self, qweight, scales, zeros) -> None:
        for name, t in (("qweight", qweight), ("scales", scales), ("zeros", zeros)):
            if (t is None) != (getattr(self, name) is None):
                raise ValueError(f"Int4Linear.{name}: {'missing' if t is None else 'given for a symmetric module'}")
            if t is not None:
                getattr(self, name).copy_(t)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _ops().int4_linear(x, self.qweight, self.scales, self.zeros, self.group_size)

    def extra_repr(self) -> str:
        return (f"in={self.in_features}, out={self.out_features}, group_size={self.group_size}, "
                f"zero_point={self.zeros is not None}")


class Int4Experts(nn.Module):
    """Routed experts in int4, output-major per expert: w13 [E, 2I, H/2] (rows gate then up), w2 [E, H, I/2]."""

    def __init__(self, num_experts: int, hidden: int, inter: int, group_size: int, zero_point: bool,
                 scale_dtype: torch.dtype = torch.float32):
        super().__init__()
        for what, k in (("hidden", hidden), ("intermediate", inter)):
            if k % group_size:
                raise ValueError(f"Int4Experts: {what} size {k} is not a multiple of group_size {group_size}")
        self.num_experts, self.hidden, self.inter, self.group_size = num_experts, hidden, inter, group_size
        E, G = num_experts, group_size
        self.w13_q = _frozen(torch.empty(E, 2 * inter, hidden // 2, dtype=torch.uint8))
        self.w13_s = _frozen(torch.empty(E, 2 * inter, hidden // G, dtype=scale_dtype))
        self.w13_z = _frozen(torch.empty(E, 2 * inter, hidden // G, dtype=torch.uint8)) if zero_point else None
        self.w2_q = _frozen(torch.empty(E, hidden, inter // 2, dtype=torch.uint8))
        self.w2_s = _frozen(torch.empty(E, hidden, inter // G, dtype=scale_dtype))
        self.w2_z = _frozen(torch.empty(E, hidden, inter // G, dtype=torch.uint8)) if zero_point else None

    @classmethod
    def from_experts(cls, experts: nn.Module, q: QuantConfig) -> "Int4Experts":
        E, H, I2 = experts.gate_up_proj.shape
        m = cls(E, H, I2 // 2, q.group_size, q.zero_point, experts.gate_up_proj.dtype).to(experts.gate_up_proj.device)
        for e in range(E):  # one expert at a time: only its temporaries in flight
            m.load_expert(e, *quantize_expert(experts.gate_up_proj[e].detach(), experts.down_proj[e].detach(), q))
        return m

    def load_expert(self, e: int, w13: tuple, w2: tuple) -> None:
        for prefix, triple in (("w13", w13), ("w2", w2)):
            for suffix, t in zip(("q", "s", "z"), triple):
                p = getattr(self, f"{prefix}_{suffix}")
                if (t is None) != (p is None):
                    raise ValueError(f"Int4Experts.{prefix}_{suffix}: "
                                     f"{'missing' if t is None else 'given for symmetric experts'}")
                if t is not None:
                    p[e].copy_(t)

    def forward(self, x, topk_weights, topk_ids):
        return _ops().fused_moe_int4(x, self.w13_q, self.w13_s, self.w13_z, self.w2_q, self.w2_s, self.w2_z,
                                     topk_weights, topk_ids, self.group_size)

    def extra_repr(self) -> str:
        return (f"experts={self.num_experts}, hidden={self.hidden}, inter={self.inter}, "
                f"group_size={self.group_size}, zero_point={self.w13_z is not None}")


def quantize_expert(gate_up: torch.Tensor, down: torch.Tensor, q: QuantConfig):
    """One expert in HF's input-major layout (gate_up [H, 2I], down [I, H]) -> (w13, w2) triples."""
    quant = _ops().quantize_int4
    return (quant(gate_up.t().contiguous(), q.group_size, not q.zero_point),
            quant(down.t().contiguous(), q.group_size, not q.zero_point))


def int4_targets(model: nn.Module, q: QuantConfig, log: bool = True):
    """(name, module, kind) for every module online int4 replaces; kind 'linear' or 'experts'."""
    for name, mod in model.named_modules():
        if _ignored(name, q.ignore) or name.startswith(_VISION_PREFIXES):
            continue
        if isinstance(mod, nn.Linear) and _LINEAR_NAMES.search("." + name):
            widths = (mod.in_features,)
            kind = "linear"
        elif type(mod).__name__ == "Experts":
            widths = (mod.gate_up_proj.shape[1], mod.down_proj.shape[1])
            kind = "experts"
        else:
            continue
        if any(k % q.group_size for k in widths):
            if log:
                _log.info("int4: %s kept in high precision (input width %s not a multiple of group_size %d)",
                          name, "/".join(map(str, widths)), q.group_size)
            continue
        yield name, mod, kind


def _empty_module(mod: nn.Module, kind: str, q: QuantConfig) -> nn.Module:
    if kind == "linear":
        return Int4Linear(mod.in_features, mod.out_features, q.group_size, q.zero_point, mod.weight.dtype)
    E, H, I2 = mod.gate_up_proj.shape
    return Int4Experts(E, H, I2 // 2, q.group_size, q.zero_point, mod.gate_up_proj.dtype)


def int4_skeleton(model: nn.Module, q: QuantConfig, plan: dict[str, str]) -> nn.Module:
    """Swap in empty int4 modules (on the model's device, typically meta) for plan's {name: kind}."""
    for name, kind in plan.items():
        mod = model.get_submodule(name)
        with torch.device(next(mod.parameters()).device):
            _replace(model, name, _empty_module(mod, kind, q))
    model.quant_config = q
    return model


def quantize_model_int4(model: nn.Module, q: QuantConfig) -> nn.Module:
    """Online round-to-nearest int4 of a loaded model, in place (experts one at a time)."""
    if q.method != "int4":
        raise ValueError(f"quantize_model_int4: QuantConfig.method is {q.method!r}, expected 'int4'")
    for name, mod, kind in list(int4_targets(model, q)):
        _replace(model, name, Int4Linear.from_linear(mod, q) if kind == "linear" else Int4Experts.from_experts(mod, q))
    model.quant_config = q
    return model


class Int4Source:
    """Wraps a loader source so that an int4 module's parameters come out in our layout: converted from
    a pre-quantised checkpoint by `reader`, or (reader None) quantised here from the source's high-precision
    weight, cast to `dtype` on `device` first (as quantising the loaded model would), one expert at a time.
    Every other parameter passes through. A module's tensors are made once and handed out one by one."""

    def __init__(self, inner, model: nn.Module, plan: dict[str, str], q: QuantConfig, reader, device, dtype):
        self.inner, self.plan, self.q, self.reader, self.device, self.dtype = inner, plan, q, reader, device, dtype
        self.modules = {n: model.get_submodule(n) for n in plan}
        self.pending: dict[str, dict[str, torch.Tensor]] = {}

    def _module_of(self, name: str) -> str | None:
        mod = name.rpartition(".")[0]
        return mod if mod in self.plan else None

    def _hp_name(self, mod: str) -> str:
        return mod + (".weight" if self.plan[mod] == "linear" else ".gate_up_proj")

    def _make(self, mod: str) -> dict[str, torch.Tensor]:
        m = self.modules[mod]
        if self.reader is not None:
            return self.reader.linear(mod, m) if self.plan[mod] == "linear" else self.reader.experts(mod, m)
        meta = self.device.type == "meta"
        if self.plan[mod] == "linear":
            w = self.inner.load(mod + ".weight", torch.Size((m.out_features, m.in_features)))
            if meta:
                return {n: torch.empty_like(p, device="meta") for n, p in m.named_parameters()}
            qw, s, z = _ops().quantize_int4(w.to(device=self.device, dtype=self.dtype), self.q.group_size,
                                            not self.q.zero_point)
            return {"qweight": qw, "scales": s, "zeros": z}
        E, H, inter = m.num_experts, m.hidden, m.inter
        gate_up = self.inner.load(mod + ".gate_up_proj", torch.Size((E, H, 2 * inter)))
        down = self.inner.load(mod + ".down_proj", torch.Size((E, inter, H)))
        out = {n: torch.empty_like(p, device=self.device) for n, p in m.named_parameters()}
        if not meta:
            for e in range(E):
                w13, w2 = quantize_expert(gate_up[e].to(device=self.device, dtype=self.dtype),
                                          down[e].to(device=self.device, dtype=self.dtype), self.q)
                for prefix, triple in (("w13", w13), ("w2", w2)):
                    for suffix, t in zip(("q", "s", "z"), triple):
                        if t is not None:
                            out[f"{prefix}_{suffix}"][e].copy_(t)
        return out

    def load(self, name: str, expect: torch.Size, shard=None) -> torch.Tensor:
        mod = self._module_of(name)
        if mod is None:
            return self.inner.load(name, expect, shard)
        if mod not in self.pending:
            self.pending[mod] = {k: v for k, v in self._make(mod).items() if v is not None}
        made = self.pending[mod]
        t = made.pop(name.rpartition(".")[2], None)
        if t is None:
            raise KeyError(f"int4 module {mod!r} made no tensor for {name!r}")
        if not made:
            del self.pending[mod]
        return t

    def where(self, name: str) -> str:
        mod = self._module_of(name)
        if mod is None:
            return self.inner.where(name)
        return self.reader.where(mod) if self.reader is not None else self.inner.where(self._hp_name(mod))

    def file_of(self, name: str) -> str:
        mod = self._module_of(name)
        if mod is None:
            return self.inner.file_of(name)
        return self.reader.file_of(mod) if self.reader is not None else self.inner.file_of(self._hp_name(mod))

    def kv_scales(self) -> dict:
        return self.inner.kv_scales()

    def unexpected(self) -> list[str]:
        return self.inner.unexpected()

    def close(self) -> None:
        self.inner.close()


def is_int4_config(qc: dict | None) -> bool:
    """Whether a checkpoint's quantization_config is one the int4 loader reads (not FP8)."""
    from amd_llama4.quant import compressed_tensors, gptq

    return bool(qc) and (compressed_tensors.is_int4(qc) or gptq.is_gptq(qc))


def checkpoint_reader(qc: dict, source):
    from amd_llama4.quant import compressed_tensors, gptq

    if gptq.is_gptq(qc):
        return gptq.GPTQReader(qc, source)
    return compressed_tensors.CTReader(qc, source)
