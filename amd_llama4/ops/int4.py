"""int4 weight-only (w4a16) ops: group-wise quantisation helpers and the torch references of
`int4_linear` and `fused_moe_int4` (native CPU and Triton backends register themselves).

Layout (shared by every int4 consumer: quant/, loaders, kernels). A weight W [N, K] (nn.Linear's
[out, in]) with group size G (K % G == 0) is
  qweight uint8 [N, K // 2]: column k = 2j in the LOW nibble of byte j, 2j + 1 in the HIGH nibble,
  scales  [N, K // G] fp32 | bf16 | fp16,
  zeros   uint8 [N, K // G] with values 0..15, or None (symmetric: zero point 8),
  W[n, k] = (q[n, k] - z[n, k // G]) * s[n, k // G].
Routed experts carry a leading expert dim, output-major per expert: w13_q [E, 2I, H // 2] (rows
0..I-1 gate, I..2I-1 up) with w13_s / w13_z [E, 2I, H // G]; w2_q [E, H, I // 2] with w2_s / w2_z
[E, H, I // G].
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from amd_llama4.ops.dispatch import dispatched

GROUP_SIZES = (32, 64, 128)
SCALE_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
SYMMETRIC_ZERO = 8


# ---------------------------------------------------------------- packing and quantisation

def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """q: integer [..., K] with values 0..15, K even -> uint8 [..., K // 2] (k = 2j low nibble)."""
    if q.shape[-1] % 2:
        raise ValueError(f"pack_int4: q's last dim {q.shape[-1]} must be even")
    q = q.to(torch.uint8)
    return (q[..., 0::2] & 0xF) | ((q[..., 1::2] & 0xF) << 4)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """packed: uint8 [..., K // 2] -> uint8 [..., K] with values 0..15."""
    if packed.dtype != torch.uint8:
        raise ValueError(f"unpack_int4: packed must be uint8, got {packed.dtype}")
    return torch.stack((packed & 0xF, packed >> 4), dim=-1).flatten(-2)


def quantize_int4(w: torch.Tensor, group_size: int, symmetric: bool = True
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Round-to-nearest int4 of w [..., N, K] per group of `group_size` input columns ->
    (qweight uint8 [..., N, K // 2], scales [..., N, K // G] in w.dtype, zeros uint8 [..., N, K // G] | None).

    Symmetric: s = absmax / 7 and q = round(w / s) + 8 (the level -8 stays unused, so the group's
    largest magnitude is exact whatever its sign). Zero point: s = (max - min) / 15 over a range that
    includes 0, z = round(-min / s). The scale is rounded to its storage dtype before w is divided by
    it, so dequantize_int4 reproduces exactly the levels chosen here."""
    _check_group(group_size, w.shape[-1], "w")
    if not w.is_floating_point():
        raise ValueError(f"quantize_int4: w must be floating point, got {w.dtype}")
    sdt = w.dtype if w.dtype in SCALE_DTYPES else torch.float32
    g = w.float().reshape(*w.shape[:-1], w.shape[-1] // group_size, group_size)
    if symmetric:
        s = (g.abs().amax(-1) / 7.0).to(sdt)
        sf = torch.where(s.float() == 0, torch.ones_like(s, dtype=torch.float32), s.float())
        q = torch.clamp(torch.round(g / sf[..., None]) + SYMMETRIC_ZERO, 0, 15)
        z = None
    else:
        lo, hi = g.amin(-1).clamp(max=0), g.amax(-1).clamp(min=0)
        s = ((hi - lo) / 15.0).to(sdt)
        sf = torch.where(s.float() == 0, torch.ones_like(s, dtype=torch.float32), s.float())
        zf = torch.clamp(torch.round(-lo / sf), 0, 15)
        q = torch.clamp(torch.round(g / sf[..., None]) + zf[..., None], 0, 15)
        z = zf.to(torch.uint8)
    return pack_int4(q.reshape(w.shape).to(torch.uint8)), s, z


def dequantize_int4(qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor | None,
                    group_size: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(qweight [..., N, K // 2], scales / zeros [..., N, K // G]) -> W [..., N, K] in dtype (computed in fp32)."""
    check_int4_weight(qweight, scales, zeros, group_size, "dequantize_int4", "")
    q = unpack_int4(qweight).float()
    *lead, N, K = q.shape
    q = q.reshape(*lead, N, K // group_size, group_size)
    z = float(SYMMETRIC_ZERO) if zeros is None else zeros.float()[..., None]
    return ((q - z) * scales.float()[..., None]).reshape(*lead, N, K).to(dtype)


# ---------------------------------------------------------------- input checks (shared by every backend)

def _check_group(group_size: int, K: int, what: str, op: str = "quantize_int4") -> None:
    if isinstance(group_size, bool) or group_size not in GROUP_SIZES:
        raise ValueError(f"{op}: group_size {group_size!r} not in {GROUP_SIZES}")
    if K % group_size:
        raise ValueError(f"{op}: {what}'s input width {K} is not a multiple of group_size {group_size}")


def check_int4_weight(qweight, scales, zeros, group_size: int, op: str, prefix: str) -> tuple[int, int]:
    """Validate one (possibly expert-batched) int4 weight; -> (N, K). Errors name the tensor
    (`prefix` + qweight/scales/zeros, e.g. 'w13_q')."""
    names = (f"{prefix}qweight", f"{prefix}scales", f"{prefix}zeros") if not prefix.endswith("_") else \
        (f"{prefix}q", f"{prefix}s", f"{prefix}z")
    if qweight.dtype != torch.uint8:
        raise ValueError(f"{op}: {names[0]} must be uint8 (two int4 per byte), got {qweight.dtype}")
    if qweight.dim() < 2:
        raise ValueError(f"{op}: {names[0]} must be [..., N, K // 2], got {tuple(qweight.shape)}")
    N, K = qweight.shape[-2], qweight.shape[-1] * 2
    _check_group(group_size, K, names[0], op)
    want = (*qweight.shape[:-1], K // group_size)
    if scales.dtype not in SCALE_DTYPES:
        raise ValueError(f"{op}: {names[1]} must be one of {SCALE_DTYPES}, got {scales.dtype}")
    if tuple(scales.shape) != want:
        raise ValueError(f"{op}: {names[1]} must be {list(want)} for {names[0]} {list(qweight.shape)} "
                         f"and group_size {group_size}, got {list(scales.shape)}")
    if zeros is not None:
        if zeros.dtype != torch.uint8:
            raise ValueError(f"{op}: {names[2]} must be uint8 (values 0..15), got {zeros.dtype}")
        if tuple(zeros.shape) != want:
            raise ValueError(f"{op}: {names[2]} must be {list(want)}, got {list(zeros.shape)}")
    devs = {t.device for t in (qweight, scales, zeros) if t is not None}
    if len(devs) > 1:
        raise ValueError(f"{op}: {names[0]}, {names[1]} and {names[2]} are on different devices "
                         f"{sorted(map(str, devs))}")
    return N, K


def check_int4_linear_inputs(x, qweight, scales, zeros, group_size) -> tuple[int, int]:
    N, K = check_int4_weight(qweight, scales, zeros, group_size, "int4_linear", "")
    if qweight.dim() != 2:
        raise ValueError(f"int4_linear: qweight must be [N, K // 2], got {list(qweight.shape)}")
    if x.dim() < 1 or x.shape[-1] != K:
        raise ValueError(f"int4_linear: x must be [..., K={K}] for qweight {list(qweight.shape)}, got {list(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"int4_linear: x must be floating point, got {x.dtype}")
    if x.device != qweight.device:
        raise ValueError(f"int4_linear: x is on {x.device} but qweight on {qweight.device}")
    return N, K


def check_moe_int4_inputs(x, w13_q, w13_s, w13_z, w2_q, w2_s, w2_z, topk_weights, topk_ids, group_size
                          ) -> tuple[int, int, int]:
    """-> (E, H, I)."""
    op = "fused_moe_int4"
    if x.dim() != 2 or not x.is_floating_point():
        raise ValueError(f"{op}: x must be floating point [T, H], got {x.dtype} {list(x.shape)}")
    T, H = x.shape
    if w13_q.dim() != 3 or w2_q.dim() != 3:
        raise ValueError(f"{op}: w13_q [E, 2I, H // 2] and w2_q [E, H, I // 2] must be 3-d, got "
                         f"{list(w13_q.shape)} and {list(w2_q.shape)}")
    if (w13_z is None) != (w2_z is None):
        raise ValueError(f"{op}: w13_z and w2_z must both be given or both be None")
    N1, K1 = check_int4_weight(w13_q, w13_s, w13_z, group_size, op, "w13_")
    E = w13_q.shape[0]
    if K1 != H or N1 % 2:
        raise ValueError(f"{op}: w13_q must be [E, 2I, H // 2 = {H // 2}], got {list(w13_q.shape)}")
    inter = N1 // 2
    N2, K2 = check_int4_weight(w2_q, w2_s, w2_z, group_size, op, "w2_")
    if w2_q.shape[0] != E or N2 != H or K2 != inter:
        raise ValueError(f"{op}: w2_q must be [E={E}, H={H}, I // 2 = {inter // 2}], got {list(w2_q.shape)}")
    if topk_ids.dim() != 2 or topk_ids.shape[0] != T or topk_weights.shape != topk_ids.shape:
        raise ValueError(f"{op}: topk_ids {list(topk_ids.shape)} and topk_weights {list(topk_weights.shape)} "
                         f"must both be [T={T}, k]")
    if topk_ids.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"{op}: topk_ids must be int32 or int64, got {topk_ids.dtype}")
    for name, t in (("w13_q", w13_q), ("w2_q", w2_q), ("topk_weights", topk_weights), ("topk_ids", topk_ids)):
        if t.device != x.device:
            raise ValueError(f"{op}: {name} is on {t.device} but x on {x.device}")
    return E, H, inter


# ---------------------------------------------------------------- torch references

@dispatched("int4_linear")
def int4_linear(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor | None,
                group_size: int) -> torch.Tensor:
    """x: [..., K]; qweight: uint8 [N, K // 2]; scales / zeros: [N, K // G] -> [..., N] in x.dtype
    (dequantised weight, fp32 accumulation)."""
    check_int4_linear_inputs(x, qweight, scales, zeros, group_size)
    w = dequantize_int4(qweight, scales, zeros, group_size)
    return F.linear(x.float(), w).to(x.dtype)


@dispatched("fused_moe_int4")
def fused_moe_int4(x: torch.Tensor, w13_q: torch.Tensor, w13_s: torch.Tensor, w13_z: torch.Tensor | None,
                   w2_q: torch.Tensor, w2_s: torch.Tensor, w2_z: torch.Tensor | None,
                   topk_weights: torch.Tensor, topk_ids: torch.Tensor, group_size: int) -> torch.Tensor:
    """x: [T, H]; int4 experts (module docstring); topk_weights fp32 / topk_ids: [T, k] -> [T, H] x.dtype.

    As `ops.moe.fused_moe`: the routing weight scales the expert INPUT in fp32, rounded to x.dtype;
    per expert, gate_up = xin @ W13^T in fp32, h = silu(gate) * up rounded to x.dtype (what a kernel
    feeds its second GEMM), y = h @ W2^T in fp32; the k slots of a token are summed in fp32 and
    rounded once to x.dtype."""
    check_moe_int4_inputs(x, w13_q, w13_s, w13_z, w2_q, w2_s, w2_z, topk_weights, topk_ids, group_size)
    T, H = x.shape
    k = topk_ids.shape[1]
    flat = topk_ids.reshape(-1).long()
    out = torch.zeros(T, H, dtype=torch.float32, device=x.device)
    for e in torch.unique(flat).tolist():
        rows = (flat == e).nonzero().squeeze(1)
        token = rows // k
        xin = (x.index_select(0, token).float() * topk_weights.reshape(-1)[rows, None].float()).to(x.dtype)
        w13 = dequantize_int4(w13_q[e], w13_s[e], None if w13_z is None else w13_z[e], group_size)
        gate_up = xin.float() @ w13.t()
        inter = gate_up.shape[1] // 2
        h = (F.silu(gate_up[:, :inter]) * gate_up[:, inter:]).to(x.dtype)
        w2 = dequantize_int4(w2_q[e], w2_s[e], None if w2_z is None else w2_z[e], group_size)
        out.index_add_(0, token, h.float() @ w2.t())
    return out.to(x.dtype)
