"""FP8 (w8a8) modules and model quantisation.

Quantised: attention q/k/v/o, dense MLP and shared-expert projections (FP8Linear: per-output-channel
or 128x128 block weight scales, dynamic per-token / 1x128 activation scales) and the routed experts
(FP8Experts: per-output-channel weight scales). Kept in high precision: router, norms, embeddings,
lm_head, and anything named in QuantConfig.ignore. The FP8 format is the platform's (e4m3fnuz on
gfx942, e4m3fn elsewhere) unless the QuantConfig names one.
"""
from __future__ import annotations

import re

import torch
import torch.nn as nn

from amd_llama4 import ops
from amd_llama4.config import QuantConfig
from amd_llama4.platform import fp8_format, torch_fp8_dtype
_LINEAR_NAMES = re.compile(r"\.(self_attn\.[qkvo]_proj|feed_forward\.(shared_expert\.)?(gate|up|down)_proj)$")


def resolve_format(q: QuantConfig) -> str:
    return q.fp8_format or fp8_format()


def _frozen(t: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(t, requires_grad=False)


class FP8Linear(nn.Module):
    """y = x @ W^T with W [N, K] fp8. weight_scale: [N, 1] per channel, or [ceil(N/bn), ceil(K/bk)] blocks."""

    def __init__(self, in_features: int, out_features: int, fmt: str, block: tuple[int, int] | None = None):
        super().__init__()
        self.in_features, self.out_features, self.fmt, self.block = in_features, out_features, fmt, block
        scale_shape = (out_features, 1) if block is None else (-(-out_features // block[0]),
                                                               -(-in_features // block[1]))
        self.weight = _frozen(torch.empty(out_features, in_features, dtype=torch_fp8_dtype(fmt)))
        self.weight_scale = _frozen(torch.empty(scale_shape, dtype=torch.float32))

    @classmethod
    def from_linear(cls, lin: nn.Linear, fmt: str, block: tuple[int, int] | None) -> "FP8Linear":
        if lin.bias is not None:
            raise ValueError("FP8Linear: biased linears are not used by Llama 4")
        m = cls(lin.in_features, lin.out_features, fmt, block).to(lin.weight.device)
        q, s = ops.quantize_fp8(lin.weight.detach(), fmt, "block" if block else "row", block)
        m.weight.data, m.weight_scale.data = q, s
        return m

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x2 = x.reshape(-1, self.in_features)  # [T, K]
        if self.block is None:
            xq, xs = ops.quantize_fp8(x2, self.fmt, "row")
        else:
            xq, xs = ops.quantize_fp8(x2, self.fmt, "block", (1, self.block[1]))
        y = ops.fp8_gemm(xq, xs, self.weight, self.weight_scale, self.block, out_dtype=x.dtype)
        return y.reshape(*x.shape[:-1], self.out_features)

    def convert_format(self, fmt: str) -> None:
        self.weight.data, self.weight_scale.data = _convert(self.weight.data, self.weight_scale.data, fmt, self.block)
        self.fmt = fmt

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, fmt={self.fmt}, block={self.block}"


class FP8Experts(nn.Module):
    """Routed experts in fp8, HF's fused input-major layout, per-output-channel scales [E, 1, N]."""

    def __init__(self, num_experts: int, hidden: int, inter: int, fmt: str):
        super().__init__()
        self.fmt = fmt
        dt = torch_fp8_dtype(fmt)
        self.gate_up_proj = _frozen(torch.empty(num_experts, hidden, 2 * inter, dtype=dt))
        self.gate_up_proj_scale = _frozen(torch.empty(num_experts, 1, 2 * inter))
        self.down_proj = _frozen(torch.empty(num_experts, inter, hidden, dtype=dt))
        self.down_proj_scale = _frozen(torch.empty(num_experts, 1, hidden))

    @classmethod
    def from_experts(cls, experts: nn.Module, fmt: str) -> "FP8Experts":
        E, H, I2 = experts.gate_up_proj.shape
        m = cls(E, H, I2 // 2, fmt).to(experts.gate_up_proj.device)
        # fp8 experts are input-major (contiguous) whatever the source's layout (a CPU model's are
        # output-major, model/llama4.py Experts): the layout every fp8 MoE kernel reads
        for w, s in (("gate_up_proj", "gate_up_proj_scale"), ("down_proj", "down_proj_scale")):
            q, scale = ops.quantize_fp8(getattr(experts, w).detach(), fmt, "col")
            getattr(m, w).data, getattr(m, s).data = q.contiguous(), scale
        return m

    def forward(self, x, topk_weights, topk_ids):
        return ops.fused_moe_fp8(x, self.gate_up_proj, self.gate_up_proj_scale, self.down_proj,
                                 self.down_proj_scale, topk_weights, topk_ids, self.fmt)

    def convert_format(self, fmt: str) -> None:
        for w, s in (("gate_up_proj", "gate_up_proj_scale"), ("down_proj", "down_proj_scale")):
            q, sc = _convert(getattr(self, w).data, getattr(self, s).data, fmt, None, granularity="col")
            getattr(self, w).data, getattr(self, s).data = q, sc
        self.fmt = fmt


def _convert(q: torch.Tensor, scale: torch.Tensor, fmt: str, block, granularity: str = "row"):
    """Re-express fp8 weights in another format: fn -> fnuz exactly (same bits, doubled scale, -0 -> 0);
    any other direction by dequantise + requantise."""
    target = torch_fp8_dtype(fmt)
    if q.dtype == target:
        return q, scale
    if q.dtype == torch.float8_e4m3fn and target == torch.float8_e4m3fnuz:
        return ops.fn_to_fnuz(q, scale)
    w = ops.dequantize_fp8(q, scale, block)
    return ops.quantize_fp8(w, fmt, "block" if block else granularity, block)


def _ignored(name: str, patterns: list[str]) -> bool:
    name = name.removeprefix("language_model.")
    for p in patterns:
        p = p.removeprefix("language_model.")
        if p.startswith("re:"):
            if re.fullmatch(p[3:], name) or re.fullmatch(p[3:], "language_model." + name):
                return True
        elif name == p or name.endswith("." + p) or name.startswith(p + "."):
            return True
    return False


# the vision tower and its projector: never FP8 (peers keep them in high precision)
_VISION_PREFIXES = ("vision_model", "multi_modal_projector")


def fp8_targets(model: nn.Module, q: QuantConfig):
    """(name, module, kind) for every module that FP8 replaces; kind is 'linear' or 'experts'."""
    for name, mod in model.named_modules():
        if _ignored(name, q.ignore) or name.startswith(_VISION_PREFIXES):  # the tower stays in bf16, as peers keep it
            continue
        if isinstance(mod, nn.Linear) and _LINEAR_NAMES.search("." + name):
            yield name, mod, "linear"
        elif type(mod).__name__ == "Experts":
            yield name, mod, "experts"


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, new)


def quantize_model(model: nn.Module, q: QuantConfig, fmt: str | None = None) -> nn.Module:
    """Online quantisation of a loaded model, in place."""
    fmt = fmt or resolve_format(q)
    for name, mod, kind in list(fp8_targets(model, q)):
        new = FP8Linear.from_linear(mod, fmt, q.weight_block) if kind == "linear" else FP8Experts.from_experts(mod, fmt)
        _replace(model, name, new)
    model.quant_config = q
    return model


def fp8_skeleton(model: nn.Module, q: QuantConfig, fmt: str) -> nn.Module:
    """Swap in empty FP8 modules (on the model's device, typically meta) for a pre-quantised checkpoint."""
    for name, mod, kind in list(fp8_targets(model, q)):
        with torch.device(next(mod.parameters()).device):
            if kind == "linear":
                new = FP8Linear(mod.in_features, mod.out_features, fmt, q.weight_block)
            else:
                E, H, I2 = mod.gate_up_proj.shape
                new = FP8Experts(E, H, I2 // 2, fmt)
        _replace(model, name, new)
    model.quant_config = q
    return model


def convert_model_format(model: nn.Module, fmt: str) -> None:
    for mod in model.modules():
        if isinstance(mod, (FP8Linear, FP8Experts)) and mod.fmt != fmt:
            mod.convert_format(fmt)


def parse_quantization_config(qc: dict | None) -> tuple[QuantConfig, str] | None:
    """A checkpoint's `quantization_config` -> (QuantConfig, the format its fp8 tensors are stored in)."""
    if not qc:
        return None
    from amd_llama4.quant.int4 import is_int4_config

    if is_int4_config(qc):  # int4 (compressed-tensors pack-quantized, GPTQ): quant/int4.py loads those
        return None
    method = qc.get("quant_method")
    if method not in ("fp8", "fbgemm_fp8", "compressed-tensors"):
        raise ValueError(f"config.json: quantization_config.quant_method {method!r} unsupported "
                         "(fp8, fbgemm_fp8, compressed-tensors)")
    block = qc.get("weight_block_size")
    if method == "fbgemm_fp8":
        from amd_llama4.quant.fbgemm import activation_scale_ub

        # Validated, not applied: our dynamic per-token activation scales have no upper bound (docs/fp8.md).
        activation_scale_ub(qc)
    ignore = list(qc.get("modules_to_not_convert") or qc.get("ignore") or [])
    stored = qc.get("fmt", "e4m3fn")
    return QuantConfig(method="fp8", weight_block=tuple(block) if block else None, ignore=ignore), stored


def weight_bytes_by_component(model: nn.Module) -> dict[str, int]:
    """Resident parameter bytes grouped as attention / experts / shared_expert / dense_mlp / embeddings / other."""
    out = {k: 0 for k in ("attention", "experts", "shared_expert", "router", "dense_mlp", "embeddings", "norms",
                          "vision")}
    for name, p in model.named_parameters():
        n = p.numel() * p.element_size()
        if name.startswith(_VISION_PREFIXES):
            out["vision"] += n
        elif ".self_attn." in name:
            out["attention"] += n
        elif ".experts." in name:
            out["experts"] += n
        elif ".shared_expert." in name:
            out["shared_expert"] += n
        elif ".router." in name:
            out["router"] += n
        elif ".feed_forward." in name:
            out["dense_mlp"] += n
        elif "embed_tokens" in name or name.startswith("lm_head"):
            out["embeddings"] += n
        else:
            out["norms"] += n
    out["total"] = sum(out.values())
    return out
