"""Per-token (row) dynamic FP8 quantisation; the fp8 grid rounding shared by FP8 kernels."""
import triton
import triton.language as tl


@triton.jit
def round_to_fp8_grid(x, EMIN: tl.constexpr):
    """Round fp32 x (already clamped to the format's range) to the nearest e4m3 value, ties to even,
    staying in fp32, so the cast to fp8 that follows is exact. Portable (same on every backend) and it
    sidesteps the interpreter's fp32->fp8 cast, which is off by 2x when rounding carries.
    EMIN: biased fp32 exponent of the format's smallest normal (121 e4m3fn, 120 e4m3fnuz)."""
    bits = x.to(tl.int32, bitcast=True)
    e = tl.maximum((bits >> 23) & 0xFF, EMIN)  # subnormals share the smallest normal's quantum
    # c = 1.5 * 2^(e - 127 + 20): the ulp of c is 2^(e - 127 - 3), the e4m3 quantum at |x|'s exponent,
    # so (|x| + c) - c rounds |x| to 3 mantissa bits with the FPU's round-to-nearest-even.
    c = (((e + 20) << 23) | 0x400000).to(tl.float32, bitcast=True)
    r = (tl.abs(x) + c) - c
    return tl.where(x < 0, -r, r)


@triton.jit
def quant_fp8_rows_kernel(x_ptr, q_ptr, s_ptr, N, stride_xm, stride_qm,
                          FMAX: tl.constexpr, EMIN: tl.constexpr, BLOCK: tl.constexpr):
    # x: [M, N] float -> q: [M, N] fp8, s: [M] fp32 = max(amax_row, 1e-12) / FMAX; one program per row.
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    amax = tl.zeros([BLOCK], dtype=tl.float32)
    for start in range(0, N, BLOCK):
        x = tl.load(x_ptr + row * stride_xm + start + offs, mask=start + offs < N, other=0.0)
        amax = tl.maximum(amax, tl.abs(x.to(tl.float32)))
    scale = tl.maximum(tl.max(amax, axis=0), 1e-12) / FMAX
    for start in range(0, N, BLOCK):
        m = start + offs < N
        x = tl.load(x_ptr + row * stride_xm + start + offs, mask=m, other=0.0).to(tl.float32)
        q = round_to_fp8_grid(tl.minimum(tl.maximum(x / scale, -FMAX), FMAX), EMIN)
        tl.store(q_ptr + row * stride_qm + start + offs, q.to(q_ptr.dtype.element_ty), mask=m)
    tl.store(s_ptr + row, scale)
