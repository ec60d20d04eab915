"""w4a16 GEMM: c[M, N] = a[M, K] @ W^T with W [N, K] packed int4 (amd_llama4/ops/int4.py layout:
q uint8 [N, K/2], column 2j in the low nibble, 2j+1 in the high one; scales / zeros [N, K/G]).

The nibbles are never interleaved in registers: a's even and odd columns are loaded as two
[BLOCK_M, BLOCK_K/2] tiles and multiply the low and high nibbles in two dots. The dot operands are
(q - z), small integers exact in bf16/fp16; the group scale multiplies the tile's fp32 partial sum
(BLOCK_K divides the group size, so one scale per column per K tile): no rounding of the weights."""
import triton
import triton.language as tl

from amd_llama4.ops.triton.kernels.tiles import grouped_tile


@triton.jit
def int4_tile_dot(a_e, a_o, q, zero, dtype, DOT_F32: tl.constexpr):
    """a_e / a_o: [BM, BK/2] even / odd columns of a; q: uint8 [BK/2, BN] packed nibbles; zero:
    [BN] fp32 (8.0 symmetric) -> fp32 [BM, BN] = a @ (q - z) over the tile's BK columns."""
    w_lo = (q & 0xF).to(tl.float32) - zero[None, :]
    w_hi = (q >> 4).to(tl.float32) - zero[None, :]
    if DOT_F32:
        t = tl.dot(a_e.to(tl.float32), w_lo)
        t = tl.dot(a_o.to(tl.float32), w_hi, t)
    else:
        t = tl.dot(a_e, w_lo.to(dtype))
        t = tl.dot(a_o, w_hi.to(dtype), t)
    return t


@triton.jit
def int4_gemm_kernel(
        a_ptr, q_ptr, s_ptr, z_ptr, c_ptr, M, N, K, group_size,
        stride_am, stride_ak, stride_qn, stride_qk, stride_sn, stride_sg, stride_cm, stride_cn,
        HAS_ZERO: tl.constexpr, DOT_F32: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
    # a: [M, K] bf16|fp16 (any strides); q: uint8 [N, K/2]; s: [N, K/G]; z: uint8 [N, K/G] (HAS_ZERO);
    # c: [M, N]. K % BLOCK_K == 0 and group_size % BLOCK_K == 0 (the launcher picks BLOCK_K).
    pid = tl.program_id(0)
    pid_m, pid_n = grouped_tile(pid, tl.cdiv(M, BLOCK_M), tl.cdiv(N, BLOCK_N), GROUP_M)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_h = tl.arange(0, BLOCK_K // 2)
    m_ok = offs_m < M
    n_ok = offs_n < N
    rows_n = tl.where(n_ok, offs_n, 0).to(tl.int64)  # past N: a valid row, output masked
    a_ptrs = a_ptr + offs_m[:, None].to(tl.int64) * stride_am + (2 * offs_h)[None, :] * stride_ak
    q_ptrs = q_ptr + rows_n[None, :] * stride_qn + offs_h[:, None] * stride_qk
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for kb in range(0, K // BLOCK_K):
        a_e = tl.load(a_ptrs, mask=m_ok[:, None], other=0.0)
        a_o = tl.load(a_ptrs + stride_ak, mask=m_ok[:, None], other=0.0)
        q = tl.load(q_ptrs)
        g = (kb * BLOCK_K) // group_size
        s = tl.load(s_ptr + rows_n * stride_sn + g * stride_sg).to(tl.float32)
        if HAS_ZERO:
            zero = tl.load(z_ptr + rows_n * stride_sn + g * stride_sg).to(tl.float32)
        else:
            zero = tl.full((BLOCK_N,), 8.0, tl.float32)
        acc += int4_tile_dot(a_e, a_o, q, zero, a_ptr.dtype.element_ty, DOT_F32) * s[None, :]
        a_ptrs += BLOCK_K * stride_ak
        q_ptrs += (BLOCK_K // 2) * stride_qk
    c_ptrs = c_ptr + offs_m[:, None].to(tl.int64) * stride_cm + offs_n[None, :] * stride_cn
    tl.store(c_ptrs, acc.to(c_ptr.dtype.element_ty), mask=m_ok[:, None] & n_ok[None, :])
