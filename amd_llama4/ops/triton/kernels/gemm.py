"""FP8 scaled matmul: c = (a * a_scale) @ (b * b_scale)^T with per-tensor / per-token x per-channel
scales (applied once after the K loop) or block scales (1 x SK for a, SN x SK for b, inside the loop)."""
import triton
import triton.language as tl

from amd_llama4.ops.triton.kernels.tiles import grouped_tile


@triton.jit
def fp8_gemm_kernel(
        a_ptr, b_ptr, c_ptr, as_ptr, bs_ptr, M, N, K,
        stride_am, stride_ak, stride_bn, stride_bk, stride_cm, stride_cn,
        stride_asm, stride_ask, stride_bsn, stride_bsk,
        BLOCK_SCALE: tl.constexpr, SCALE_BN: tl.constexpr, SCALE_BK: tl.constexpr, DOT_F32: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
    # a: [M, K] fp8; b: [N, K] fp8 (nn.Linear layout); c: [M, N]
    # per-token/channel: as [M] (stride_asm 0 for per-tensor), bs [N] (stride_bsn 0 for per-tensor)
    # block: as [M, cdiv(K, SCALE_BK)], bs [cdiv(N, SCALE_BN), cdiv(K, SCALE_BK)]; BLOCK_K divides SCALE_BK
    pid = tl.program_id(0)
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    pid_m, pid_n = grouped_tile(pid, num_pid_m, num_pid_n, GROUP_M)

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    m_ok = offs_m < M
    n_ok = offs_n < N
    a_ptrs = a_ptr + offs_m[:, None].to(tl.int64) * stride_am + offs_k[None, :] * stride_ak
    b_ptrs = b_ptr + offs_n[None, :].to(tl.int64) * stride_bn + offs_k[:, None] * stride_bk
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for kb in range(0, tl.cdiv(K, BLOCK_K)):
        k_ok = offs_k < K - kb * BLOCK_K
        a = tl.load(a_ptrs, mask=m_ok[:, None] & k_ok[None, :], other=0.0)
        b = tl.load(b_ptrs, mask=k_ok[:, None] & n_ok[None, :], other=0.0)
        if DOT_F32:
            a = a.to(tl.float32)
            b = b.to(tl.float32)
        if BLOCK_SCALE:
            ks = (kb * BLOCK_K) // SCALE_BK
            a_s = tl.load(as_ptr + offs_m * stride_asm + ks * stride_ask, mask=m_ok, other=0.0)
            b_s = tl.load(bs_ptr + (offs_n // SCALE_BN) * stride_bsn + ks * stride_bsk, mask=n_ok, other=0.0)
            acc += tl.dot(a, b) * a_s[:, None] * b_s[None, :]
        else:
            acc = tl.dot(a, b, acc)
        a_ptrs += BLOCK_K * stride_ak
        b_ptrs += BLOCK_K * stride_bk
    if not BLOCK_SCALE:
        a_s = tl.load(as_ptr + offs_m * stride_asm, mask=m_ok, other=0.0)
        b_s = tl.load(bs_ptr + offs_n * stride_bsn, mask=n_ok, other=0.0)
        acc = acc * a_s[:, None] * b_s[None, :]
    c_ptrs = c_ptr + offs_m[:, None].to(tl.int64) * stride_cm + offs_n[None, :] * stride_cn
    tl.store(c_ptrs, acc.to(c_ptr.dtype.element_ty), mask=m_ok[:, None] & n_ok[None, :])
