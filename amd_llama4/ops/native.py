"""Wrappers over the compiled extension `amd_llama4._C`; registers native ops with the dispatch.
Absent or disabled extension (AMD_LLAMA4_NO_NATIVE=1): nothing registers, torch paths run.

Each launcher takes the torch reference's signature, makes inputs contiguous, allocates outputs and
passes borrowed tensors (pointer, dtype, shape, strides, device, stream) to `_C`; the C++ side checks
shapes and dtypes again (ValueError naming the tensor). `supports` predicates send what the native
code cannot do (dtypes, devices of a CPU-only build) to the next backend.
"""
from __future__ import annotations

import functools
import os

import torch

from amd_llama4.platform import FP8_FORMATS

# Why _C is absent (None when loaded); read by ops/dispatch.py, which warns once and `amd-llama4 info`.
IMPORT_ERROR: str | None = None
DISABLED = os.environ.get("AMD_LLAMA4_NO_NATIVE") == "1"
try:
    if DISABLED:
        raise ImportError("disabled by AMD_LLAMA4_NO_NATIVE=1")
    from amd_llama4 import _C  # type: ignore[attr-defined]
except ImportError as e:
    _C = None
    IMPORT_ERROR = f"{type(e).__name__}: {e}"


def available() -> bool:
    return _C is not None


def build_info() -> dict:
    if _C is None:
        raise RuntimeError("amd_llama4._C is not built (see README: building the native extension)")
    return dict(_C.build_info())


_DTYPE_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2, torch.float8_e4m3fn: 3,
                torch.float8_e4m3fnuz: 4, torch.int32: 5, torch.int64: 6, torch.uint8: 7}
_ACT_DTYPES = (torch.float32, torch.bfloat16)
_FP8 = {name: f.dtype for name, f in FP8_FORMATS.items()}
_GPU = _C is not None and build_info()["backend"] in ("rocm", "cuda")


def info() -> dict:
    """The extension's facts for `amd-llama4 info` and benchmark metadata."""
    try:
        return {"native_extension": available(), "native_build": build_info() if available() else None}
    except Exception as e:  # noqa: BLE001 - info must always print
        return {"native_extension": available(), "native_build": f"error: {e}"}


def _ref(t: torch.Tensor, name: str):
    # called ~300 times per eager decode step: attribute reads only (is_cuda is also true on ROCm).
    # The ref owns t: a temporary (`_ref(w.contiguous(), ...)` as a call argument) must outlive the
    # kernel that reads its pointer, not be freed (and its memory reused) when _ref returns.
    if t.is_cuda:
        r = _C.TensorRef(t.data_ptr(), _DTYPE_CODES[t.dtype], t.shape, t.stride(), 1,
                         torch.cuda.current_stream(t.device).cuda_stream, name)
    else:
        r = _C.TensorRef(t.data_ptr(), _DTYPE_CODES[t.dtype], t.shape, t.stride(), 0, 0, name)
    r.owner = t
    return r


def _device_ok(*ts: torch.Tensor | None) -> bool:
    return all(t is None or t.device.type == "cpu" or (_GPU and t.device.type == "cuda") for t in ts)


# ---------------------------------------------------------------- activation / norm

def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    # x: [..., 2I] -> [..., I]
    d = x.shape[-1] // 2
    x2 = x.reshape(-1, x.shape[-1]).contiguous()
    out = torch.empty(x2.shape[0], d, dtype=x.dtype, device=x.device)
    _C.silu_and_mul(_ref(x2, "x"), _ref(out, "out"))
    return out.reshape(*x.shape[:-1], d)


# On CPU the native kernel (scalar expf) wins only while one call instead of torch's two matters:
# 0.72 ms against 0.16 ms at [512, 2048], ahead at the decode step's [16, 1024].
SILU_CPU_MAX_NUMEL = 1 << 16


def _silu_and_mul_ok(x, *a, **k) -> bool:
    return (x.dtype in _ACT_DTYPES and x.dim() >= 1 and x.shape[-1] % 2 == 0 and _device_ok(x)
            and (x.is_cuda or x.numel() <= SILU_CPU_MAX_NUMEL))


def rms_norm(x: torch.Tensor, weight: torch.Tensor | None, eps: float, residual: torch.Tensor | None = None):
    # x, residual: [..., H]; weight: [H] | None -> out (, x + residual)
    H = x.shape[-1]
    x2 = x.reshape(-1, H).contiguous()
    out = torch.empty_like(x2)
    r2 = residual.reshape(-1, H).contiguous() if residual is not None else None
    rout = torch.empty_like(x2) if residual is not None else None
    _C.rms_norm(_ref(x2, "x"), None if weight is None else _ref(weight.contiguous(), "weight"), float(eps),
                None if r2 is None else _ref(r2, "residual"), _ref(out, "out"),
                None if rout is None else _ref(rout, "residual_out"))
    out = out.reshape(x.shape)
    return (out, rout.reshape(x.shape)) if residual is not None else out


def _rms_norm_ok(x, weight, eps, residual=None) -> bool:
    return (x.dtype in _ACT_DTYPES and x.dim() >= 1 and _device_ok(x, weight, residual)
            and (weight is None or (weight.dtype == x.dtype and weight.shape == x.shape[-1:]))
            and (residual is None or (residual.dtype == x.dtype and residual.shape == x.shape)))


# ---------------------------------------------------------------- MoE

def moe_topk_sigmoid(router_logits: torch.Tensor, top_k: int):
    # router_logits: [T, E] -> weights fp32 [T, k], ids int32 [T, k]
    logits = router_logits.contiguous()
    T = logits.shape[0]
    w = torch.empty(T, top_k, dtype=torch.float32, device=logits.device)
    ids = torch.empty(T, top_k, dtype=torch.int32, device=logits.device)
    _C.moe_topk_sigmoid(_ref(logits, "router_logits"), int(top_k), _ref(w, "weights"), _ref(ids, "ids"))
    return w, ids


def _topk_ok(router_logits, top_k) -> bool:
    return (router_logits.dim() == 2 and router_logits.dtype in _ACT_DTYPES and _device_ok(router_logits)
            and 1 <= top_k <= min(64, router_logits.shape[1]))


def moe_align_block_size(topk_ids: torch.Tensor, num_experts: int, block_size: int):
    # topk_ids: [T, k] -> sorted_ids int32 [P], expert_ids int32 [P / block_size], count int32 [1]
    # (the contract of ops.moe.moe_align_block_size: P from shapes, tails = sentinel / -1)
    from amd_llama4.ops.moe import align_capacity

    ids = topk_ids.reshape(-1).contiguous()
    n = ids.numel()
    cap = align_capacity(n, num_experts, block_size)
    sorted_ids = torch.full((cap,), n, dtype=torch.int32, device=ids.device)
    expert_ids = torch.full((cap // block_size,), -1, dtype=torch.int32, device=ids.device)
    total = torch.zeros(1, dtype=torch.int32, device=ids.device)
    if ids.is_cuda:  # the count stays on the device
        _C.moe_align_block_size(_ref(ids, "topk_ids"), int(num_experts), int(block_size),
                                _ref(sorted_ids, "sorted_ids"), _ref(expert_ids, "expert_ids"), _ref(total, "total"))
    else:
        total.fill_(_C.moe_align_block_size(_ref(ids, "topk_ids"), int(num_experts), int(block_size),
                                            _ref(sorted_ids, "sorted_ids"), _ref(expert_ids, "expert_ids")))
    return sorted_ids, expert_ids, total


def _align_ok(topk_ids, num_experts, block_size) -> bool:
    return _device_ok(topk_ids) and topk_ids.dtype in (torch.int32, torch.int64) and block_size >= 1


def _moe_common(x, topk_weights, topk_ids):
    return (x.contiguous(), topk_weights.float().contiguous(), topk_ids.to(torch.int32).contiguous(),
            torch.empty(x.shape, dtype=x.dtype, device=x.device))


def _moe_workspace(x: torch.Tensor, ids: torch.Tensor, w_down: torch.Tensor):
    """GPU scratch of the HIP/CUDA fused MoE from torch's caching allocator (None on CPU)."""
    if not x.is_cuda:
        return None
    (T, H), (E, inter), k = x.shape, w_down.shape[:2], ids.shape[1]
    ws = torch.empty(_C.fused_moe_workspace_bytes(T, k, H, inter, E), dtype=torch.uint8, device=x.device)
    return _ref(ws, "workspace")


def output_major(w: torch.Tensor) -> bool:
    """A 3-d tensor stored as the transposed view of a contiguous one (last two dims swapped): the
    output-major expert weights of a CPU model (model/llama4.py Experts)."""
    return w.dim() == 3 and w.transpose(1, 2).is_contiguous() and not w.is_contiguous()


def _moe_weights(w_gate_up: torch.Tensor, w_down: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Expert weights as _C.fused_moe takes them: both contiguous or, on CPU, both output-major."""
    if w_gate_up.device.type == "cpu" and output_major(w_gate_up) and output_major(w_down):
        return w_gate_up, w_down
    return w_gate_up.contiguous(), w_down.contiguous()


def fused_moe(x: torch.Tensor, w_gate_up: torch.Tensor, w_down: torch.Tensor, topk_weights: torch.Tensor,
              topk_ids: torch.Tensor) -> torch.Tensor:
    # x: [T, H]; w_gate_up: [E, H, 2I]; w_down: [E, I, H]; topk_*: [T, k] -> [T, H]
    from amd_llama4.ops.moe import _check_moe_inputs

    _check_moe_inputs(x, w_gate_up, w_down, topk_weights, topk_ids)
    x, tw, ids, out = _moe_common(x, topk_weights, topk_ids)
    ws = _moe_workspace(x, ids, w_down)
    w_gate_up, w_down = _moe_weights(w_gate_up, w_down)
    _C.fused_moe(_ref(x, "x"), _ref(w_gate_up, "w_gate_up"), _ref(w_down, "w_down"),
                 _ref(tw, "topk_weights"), _ref(ids, "topk_ids"), None, None, _ref(out, "out"),
                 **({} if ws is None else {"workspace": ws}))
    return out


def _fused_moe_ok(x, w_gate_up, w_down, topk_weights, topk_ids) -> bool:
    if x.device.type != "cpu" and x.dtype != torch.bfloat16:
        return False  # the GPU kernel is bf16 (MFMA); fp32 on GPU goes to Triton/torch
    return (x.dtype in _ACT_DTYPES and w_gate_up.dtype == x.dtype and w_down.dtype == x.dtype
            and _device_ok(x, w_gate_up, w_down, topk_weights, topk_ids))


def fused_moe_fp8(x: torch.Tensor, w_gate_up_q: torch.Tensor, w_gate_up_scale: torch.Tensor,
                  w_down_q: torch.Tensor, w_down_scale: torch.Tensor, topk_weights: torch.Tensor,
                  topk_ids: torch.Tensor, fmt: str) -> torch.Tensor:
    """Native `ops.moe_fp8.fused_moe_fp8` (w8a8): x [T, H] fp32|bf16; w_gate_up_q [E, H, 2I] and
    w_down_q [E, I, H] fp8 with per-output-channel scales [E, 1, N]; expert inputs and the
    SiLU-and-mul output are quantised per token on the fly."""
    from amd_llama4.ops.moe_fp8 import check_moe_fp8_inputs

    check_moe_fp8_inputs(x, w_gate_up_q, w_gate_up_scale, w_down_q, w_down_scale, topk_weights, topk_ids, fmt)
    E = w_gate_up_q.shape[0]
    x, tw, ids, out = _moe_common(x, topk_weights, topk_ids)
    s1 = w_gate_up_scale.float().reshape(E, -1).contiguous()
    s2 = w_down_scale.float().reshape(E, -1).contiguous()
    ws = _moe_workspace(x, ids, w_down_q)
    _C.fused_moe(_ref(x, "x"), _ref(w_gate_up_q.contiguous(), "w_gate_up_q"), _ref(w_down_q.contiguous(), "w_down_q"),
                 _ref(tw, "topk_weights"), _ref(ids, "topk_ids"), _ref(s1, "w_gate_up_scale"),
                 _ref(s2, "w_down_scale"), _ref(out, "out"), **({} if ws is None else {"workspace": ws}))
    return out


def _fused_moe_fp8_ok(x, w_gate_up_q, w_gate_up_scale, w_down_q, w_down_scale, topk_weights, topk_ids, fmt) -> bool:
    return (x.dtype in _ACT_DTYPES and fmt in _FP8 and w_gate_up_q.dtype == _FP8[fmt] and w_down_q.dtype == _FP8[fmt]
            and _device_ok(x, w_gate_up_q, w_down_q, topk_weights, topk_ids))


# ---------------------------------------------------------------- linear (the decode step's GEMV)

# Up to this many rows the native weight-streaming kernel beats the BLAS GEMM (perf/bench_linear.py);
# prefill-sized inputs stay with torch.
LINEAR_MAX_ROWS = 16


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    # x: [..., K]; weight: [N, K]; bias: [N] | None -> [..., N]
    return linear_concat(x, (weight,), None if bias is None else (bias,))


def linear_concat(x: torch.Tensor, weights, biases=None) -> torch.Tensor:
    # x: [..., K]; weights[p]: [N_p, K]; biases[p]: [N_p] | None -> [..., sum N_p], one kernel call
    K, N = x.shape[-1], sum(w.shape[0] for w in weights)
    x2 = x.reshape(-1, K).contiguous()
    out = torch.empty(x2.shape[0], N, dtype=x.dtype)
    biases = biases or (None,) * len(weights)
    _C.linear(_ref(x2, "x"), [_ref(w.contiguous(), f"weights[{i}]") for i, w in enumerate(weights)],
              [None if b is None else _ref(b.contiguous(), f"biases[{i}]") for i, b in enumerate(biases)],
              _ref(out, "out"))
    return out.reshape(*x.shape[:-1], N)


def _linear_ok(x, weight, bias=None) -> bool:
    return _linear_concat_ok(x, (weight,), None if bias is None else (bias,))


def _linear_concat_ok(x, weights, biases=None) -> bool:
    biases = biases or ()
    if torch.is_grad_enabled() and (x.requires_grad or any(t is not None and t.requires_grad
                                                           for t in (*weights, *biases))):
        return False  # no autograd in the native kernel (training runs the torch path)
    K = x.shape[-1] if x.dim() >= 1 else 0
    return (x.device.type == "cpu" and x.dtype in _ACT_DTYPES and K > 0 and 0 < x.numel() // K <= LINEAR_MAX_ROWS
            and len(weights) > 0 and (not biases or len(biases) == len(weights))
            and all(w.device.type == "cpu" and w.dtype == x.dtype and w.dim() == 2 and w.shape[1] == K
                    and w.is_contiguous() for w in weights)
            and all(b is None or (b.dtype == x.dtype and b.device.type == "cpu") for b in biases))


# ---------------------------------------------------------------- paged attention (CPU)

def _i32(t: torch.Tensor) -> torch.Tensor:
    return t if t.dtype == torch.int32 and t.is_contiguous() else t.to(torch.int32).contiguous()


def _kv_scale(s) -> torch.Tensor | None:
    # None | python scalar | fp32 tensor ([], [1], [Hkv] or per token [num_blocks, block_size, Hkv], any strides)
    if s is None:
        return None
    return s.float() if isinstance(s, torch.Tensor) else torch.tensor(float(s), dtype=torch.float32)


def paged_attention(q, k_cache, v_cache, block_tables, cu_seqlens_q, seq_lens, first_pos, q_pos, scale,
                    chunk_size=None, k_scale=None, v_scale=None) -> torch.Tensor:
    """Native `ops.paged_attention.paged_attention` (CPU): reads K/V in place through the block tables."""
    from amd_llama4.ops.paged_attention import check_paged_attention_inputs

    check_paged_attention_inputs(q, k_cache, v_cache, block_tables, cu_seqlens_q, seq_lens, first_pos, q_pos,
                                 k_scale, v_scale)
    if q.stride(-1) != 1:
        q = q.contiguous()
    kc = k_cache if k_cache.stride(-1) == 1 else k_cache.contiguous()
    vc = v_cache if v_cache.stride(-1) == 1 else v_cache.contiguous()
    bt = block_tables if block_tables.dtype == torch.int32 and block_tables.stride(-1) == 1 else _i32(block_tables)
    out = torch.empty(q.shape, dtype=q.dtype)
    ks, vs = _kv_scale(k_scale), _kv_scale(v_scale)
    _C.paged_attention(_ref(q, "q"), _ref(kc, "k_cache"), _ref(vc, "v_cache"), _ref(bt, "block_tables"),
                       _ref(_i32(cu_seqlens_q), "cu_seqlens_q"), _ref(_i32(seq_lens), "seq_lens"),
                       _ref(_i32(first_pos), "first_pos"), _ref(_i32(q_pos), "q_pos"), float(scale),
                       int(chunk_size or 0), None if ks is None else _ref(ks, "k_scale"),
                       None if vs is None else _ref(vs, "v_scale"), _ref(out, "out"))
    return out


def _paged_attention_ok(q, k_cache, v_cache, *args, **kwargs) -> bool:
    return (q.device.type == "cpu" and k_cache.device.type == "cpu" and q.dtype in _ACT_DTYPES and q.dim() == 3
            and k_cache.dtype in (q.dtype, *_FP8.values()) and v_cache.dtype == k_cache.dtype
            and hasattr(_C, "paged_attention"))


# ---------------------------------------------------------------- Composable Kernel (AMD_LLAMA4_WITH_CK builds)

_CK = _C is not None and bool(build_info().get("ck")) and hasattr(_C, "ck_fused_moe")


@functools.lru_cache(maxsize=None)
def _ck_sizes_ok(hidden: int, intermediate: int, device_index: int) -> bool:
    with torch.cuda.device(device_index):  # CK asks the current device (XDL support, vector widths)
        return bool(_C.ck_fused_moe_supported(hidden, intermediate))


def fused_moe_ck(x: torch.Tensor, w_gate_up: torch.Tensor, w_down: torch.Tensor, topk_weights: torch.Tensor,
                 topk_ids: torch.Tensor) -> torch.Tensor:
    """`ops.moe.fused_moe` on CK's grouped GEMM (csrc/ck): bf16 GPU tensors only; the scratch comes
    from torch's allocator on the current stream."""
    # x: [T, H]; w_gate_up: [E, H, 2I]; w_down: [E, I, H]; topk_*: [T, k] -> [T, H]
    from amd_llama4.ops.moe import _check_moe_inputs

    _check_moe_inputs(x, w_gate_up, w_down, topk_weights, topk_ids)
    x, tw, ids, out = _moe_common(x, topk_weights, topk_ids)
    (T, H), (E, I), k = x.shape, w_down.shape[:2], ids.shape[1]
    ws = torch.empty(_C.ck_fused_moe_workspace_bytes(T, k, H, I, E), dtype=torch.uint8, device=x.device)
    with torch.cuda.device(x.device):
        _C.ck_fused_moe(_ref(x, "x"), _ref(w_gate_up.contiguous(), "w_gate_up"), _ref(w_down.contiguous(), "w_down"),
                        _ref(tw, "topk_weights"), _ref(ids, "topk_ids"), _ref(ws, "workspace"), _ref(out, "out"))
    return out


def _ck_fused_moe_ok(x, w_gate_up, w_down, topk_weights, topk_ids) -> bool:
    return (_CK and os.environ.get("AMD_LLAMA4_NO_CK") != "1"
            and all(t.device.type == "cuda" for t in (x, w_gate_up, w_down, topk_weights, topk_ids))
            and x.dtype == w_gate_up.dtype == w_down.dtype == torch.bfloat16
            and x.dim() == 2 and w_gate_up.dim() == 3 and w_down.dim() == 3
            and _ck_sizes_ok(int(x.shape[1]), int(w_down.shape[1]), x.device.index or 0))


def _fused_moe_native(x, w_gate_up, w_down, topk_weights, topk_ids) -> torch.Tensor:
    """Native fused MoE with CK: CK's grouped GEMM where it takes the inputs, our kernels otherwise."""
    impl = fused_moe_ck if _ck_fused_moe_ok(x, w_gate_up, w_down, topk_weights, topk_ids) else fused_moe
    return impl(x, w_gate_up, w_down, topk_weights, topk_ids)


def _fused_moe_native_ok(*args, **kwargs) -> bool:
    return _ck_fused_moe_ok(*args, **kwargs) or _fused_moe_ok(*args, **kwargs)


# ---------------------------------------------------------------- FP8

def _tile(shape: torch.Size, granularity: str, block) -> tuple[int, int]:
    R, C = shape[-2], shape[-1]
    return {"tensor": (R, C), "row": (1, C), "col": (R, 1)}.get(granularity) or tuple(block)


def quantize_fp8(x: torch.Tensor, fmt: str, granularity: str = "row", block: tuple[int, int] | None = None,
                 scale: torch.Tensor | None = None):
    # x: [..., R, C] -> q fp8 [..., R, C], scale fp32 [..., ceil(R/br), ceil(C/bc)]
    R, C = x.shape[-2], x.shape[-1]
    br, bc = _tile(x.shape, granularity, block)
    SR, SC = -(-R // br), -(-C // bc)
    x3 = x.reshape(-1, R, C).contiguous()
    q = torch.empty(x3.shape, dtype=_FP8[fmt], device=x.device)
    if scale is None:
        s3 = torch.empty(x3.shape[0], SR, SC, dtype=torch.float32, device=x.device)
    else:
        s3 = scale.float().expand(*x.shape[:-2], SR, SC).reshape(-1, SR, SC).contiguous()
    _C.quantize_fp8(_ref(x3, "x"), _ref(q, "q"), _ref(s3, "scale"), br, bc, scale is None)
    out_scale = s3.reshape(*x.shape[:-2], SR, SC) if scale is None else scale.float()
    return q.reshape(x.shape), out_scale


def _quantize_ok(x, fmt, granularity="row", block=None, scale=None) -> bool:
    if not (x.dtype in _ACT_DTYPES and x.dim() >= 2 and x.numel() > 0 and fmt in _FP8 and _device_ok(x, scale)):
        return False
    if granularity not in ("tensor", "row", "col", "block") or (granularity == "block") != (block is not None):
        return False
    if scale is not None:  # the reference broadcasts a given scale over its tiles; other shapes go to torch
        br, bc = _tile(x.shape, granularity, block)
        tiles = (*x.shape[:-2], -(-x.shape[-2] // br), -(-x.shape[-1] // bc))
        try:
            return tuple(torch.broadcast_shapes(scale.shape, tiles)) == tiles
        except RuntimeError:
            return False
    return True


def dequantize_fp8(q: torch.Tensor, scale: torch.Tensor, block: tuple[int, int] | None = None,
                   dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Native `ops.fp8.dequantize_fp8`: q [..., R, C] fp8, scale per tile (block) or broadcastable."""
    R, C = q.shape[-2], q.shape[-1]
    if block is None:  # a broadcast scale: each of its last two dims is 1 (whole extent) or full
        s = scale.float().reshape(*([1] * max(0, 2 - scale.dim())), *scale.shape)
        br, bc = (R if s.shape[-2] == 1 else 1), (C if s.shape[-1] == 1 else 1)
    else:
        s, (br, bc) = scale.float(), block
    SR, SC = -(-R // br), -(-C // bc)
    s3 = s.expand(*q.shape[:-2], SR, SC).reshape(-1, SR, SC).contiguous()
    q3 = q.reshape(-1, R, C).contiguous()
    out = torch.empty(q3.shape, dtype=dtype)
    _C.dequantize_fp8(_ref(q3, "q"), _ref(s3, "scale"), br, bc, _ref(out, "out"))
    return out.reshape(q.shape)


def fn_to_fnuz(q: torch.Tensor, scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Native `ops.fp8.fn_to_fnuz`: the same bits except 0x80 -> 0, scale doubled."""
    if q.dtype != torch.float8_e4m3fn:
        raise ValueError(f"fn_to_fnuz: expected float8_e4m3fn, got {q.dtype}")
    qc = q.contiguous()
    out = torch.empty(qc.shape, dtype=torch.float8_e4m3fnuz)
    _C.fn_to_fnuz(_ref(qc, "q"), _ref(out, "out"))
    return out, scale.float() * 2.0


# ---------------------------------------------------------------- registration

if _C is not None:
    from amd_llama4.ops.dispatch import register

    register("silu_and_mul", "native", supports=_silu_and_mul_ok)(silu_and_mul)
    register("rms_norm", "native", supports=_rms_norm_ok)(rms_norm)
    register("moe_topk_sigmoid", "native", supports=_topk_ok)(moe_topk_sigmoid)
    register("moe_align_block_size", "native", supports=_align_ok)(moe_align_block_size)
    register("fused_moe", "native", supports=_fused_moe_ok)(fused_moe)
    register("linear", "native", supports=_linear_ok)(linear)
    register("linear_concat", "native", supports=_linear_concat_ok)(linear_concat)
    if _CK:  # replaces the plain native fused_moe: CK first (AMD_LLAMA4_NO_CK=1 turns it off), then ours
        register("fused_moe", "native", supports=_fused_moe_native_ok)(_fused_moe_native)
    register("fused_moe_fp8", "native", supports=_fused_moe_fp8_ok)(fused_moe_fp8)
    register("quantize_fp8", "native", supports=_quantize_ok)(quantize_fp8)
    register("paged_attention", "native", supports=_paged_attention_ok)(paged_attention)


# ---------------------------------------------------------------- int4 w4a16 (CPU; ops/int4.py)

# Up to this many rows the int4 kernel (nibbles dequantised in registers) runs; above, weight rows
# are dequantised natively to x's dtype, a chunk at a time, and torch's BLAS multiplies (prefill:
# there the arithmetic dominates, and a bf16 GEMM beats any weight-streaming kernel).
INT4_GEMV_MAX_ROWS = 16
INT4_DEQUANT_CHUNK_BYTES = 8 << 20  # dequantised weight rows per BLAS call: reused, cache-sized


def int4_linear(x, qweight, scales, zeros, group_size):
    # x: [..., K] fp32|bf16; qweight: uint8 [N, K/2]; scales / zeros: [N, K/G] -> [..., N] x.dtype
    from amd_llama4.ops.int4 import check_int4_linear_inputs

    N, K = check_int4_linear_inputs(x, qweight, scales, zeros, group_size)
    x2 = x.reshape(-1, K).contiguous()
    q, s = qweight.contiguous(), scales.contiguous()
    z = None if zeros is None else zeros.contiguous()
    out = torch.empty(x2.shape[0], N, dtype=x.dtype)
    if x2.shape[0] <= INT4_GEMV_MAX_ROWS:
        _C.int4_linear(_ref(x2, "x"), _ref(q, "qweight"), _ref(s, "scales"), None if z is None else _ref(z, "zeros"),
                       int(group_size), _ref(out, "out"))
    else:
        rows = max(1, min(N, INT4_DEQUANT_CHUNK_BYTES // (K * x.element_size())))
        w = torch.empty(rows, K, dtype=x.dtype)
        for n0 in range(0, N, rows):
            n1 = min(N, n0 + rows)
            _C.dequantize_int4(_ref(q[n0:n1], "qweight"), _ref(s[n0:n1], "scales"),
                               None if z is None else _ref(z[n0:n1], "zeros"), int(group_size), _ref(w[:n1 - n0], "out"))
            out[:, n0:n1] = torch.nn.functional.linear(x2, w[:n1 - n0])
    return out.reshape(*x.shape[:-1], N)


def _int4_linear_ok(x, qweight, scales, zeros, group_size) -> bool:
    return (x.dtype in _ACT_DTYPES and all(t is None or t.device.type == "cpu" for t in (x, qweight, scales, zeros))
            and not (torch.is_grad_enabled() and x.requires_grad))


def fused_moe_int4(x, w13_q, w13_s, w13_z, w2_q, w2_s, w2_z, topk_weights, topk_ids, group_size):
    # x: [T, H]; w13_*: [E, 2I, H/2 | H/G]; w2_*: [E, H, I/2 | I/G]; topk_*: [T, k] -> [T, H] x.dtype
    from amd_llama4.ops.int4 import check_moe_int4_inputs

    check_moe_int4_inputs(x, w13_q, w13_s, w13_z, w2_q, w2_s, w2_z, topk_weights, topk_ids, group_size)
    x, tw, ids, out = _moe_common(x, topk_weights, topk_ids)
    c = {n: None if t is None else _ref(t.contiguous(), n) for n, t in
         (("w13_q", w13_q), ("w13_s", w13_s), ("w13_z", w13_z), ("w2_q", w2_q), ("w2_s", w2_s), ("w2_z", w2_z))}
    _C.fused_moe_int4(_ref(x, "x"), c["w13_q"], c["w13_s"], c["w13_z"], c["w2_q"], c["w2_s"], c["w2_z"],
                      _ref(tw, "topk_weights"), _ref(ids, "topk_ids"), int(group_size), _ref(out, "out"))
    return out


def _fused_moe_int4_ok(x, w13_q, w13_s, w13_z, w2_q, w2_s, w2_z, topk_weights, topk_ids, group_size) -> bool:
    return x.dtype in _ACT_DTYPES and all(t is None or t.device.type == "cpu" for t in (x, w13_q, w2_q, topk_ids))


if _C is not None and hasattr(_C, "int4_linear"):
    register("int4_linear", "native", supports=_int4_linear_ok)(int4_linear)
    register("fused_moe_int4", "native", supports=_fused_moe_int4_ok)(fused_moe_int4)


# ---------------------------------------------------------------- fp8_gemm w8a8 (CPU; ops/fp8_gemm.py)

# Up to this many rows the native kernel streams the fp8 weight once, decoding it in registers (the
# decode step's FP8Linear projections); larger inputs go to the torch reference (a BLAS GEMM over the
# dequantised weight: there the arithmetic, not the weight stream, dominates).
FP8_GEMM_MAX_ROWS = 16


def _f32c(t: torch.Tensor) -> torch.Tensor:
    return t if t.dtype == torch.float32 and t.is_contiguous() else t.float().contiguous()


def fp8_gemm(a_q: torch.Tensor, a_scale: torch.Tensor, b_q: torch.Tensor, b_scale: torch.Tensor,
             block: tuple[int, int] | None = None, out_dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """Native `ops.fp8_gemm.fp8_gemm` (CPU): a_q [M, K], b_q [N, K] fp8 (e4m3fn | e4m3fnuz) -> [M, N] out_dtype."""
    from amd_llama4.ops.fp8_gemm import check_fp8_gemm_inputs

    check_fp8_gemm_inputs(a_q, a_scale, b_q, b_scale, block)
    out = torch.empty(a_q.shape[0], b_q.shape[0], dtype=out_dtype)
    bn, bk = block if block is not None else (0, 0)
    # Named locals: a TensorRef holds a raw pointer, so a converted copy must outlive the call.
    a, a_s, b, b_s = a_q.contiguous(), _f32c(a_scale), b_q.contiguous(), _f32c(b_scale)
    _C.fp8_gemm(_ref(a, "a_q"), _ref(a_s, "a_scale"), _ref(b, "b_q"), _ref(b_s, "b_scale"), int(bn), int(bk),
                _ref(out, "out"))
    return out


def _fp8_gemm_ok(a_q, a_scale, b_q, b_scale, block=None, out_dtype=torch.bfloat16) -> bool:
    fp8 = tuple(_FP8.values())
    return (a_q.dim() == 2 and b_q.dim() == 2 and 1 <= a_q.shape[0] <= FP8_GEMM_MAX_ROWS and a_q.shape[1] > 0
            and b_q.shape[0] > 0 and a_q.dtype in fp8 and b_q.dtype in fp8 and out_dtype in _ACT_DTYPES
            and all(t.device.type == "cpu" for t in (a_q, a_scale, b_q, b_scale)))


if _C is not None and hasattr(_C, "fp8_gemm"):
    register("fp8_gemm", "native", supports=_fp8_gemm_ok)(fp8_gemm)
