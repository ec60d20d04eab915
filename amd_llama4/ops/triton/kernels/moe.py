"""Grouped expert GEMM over expert-sorted tokens (one source for gate_up+SiLU-mul and for down)."""
import triton
import triton.language as tl

from amd_llama4.ops.triton.kernels.tiles import grouped_tile


@triton.jit
def moe_gemm_kernel(
        a_ptr, b_ptr, c_ptr, a_scale_ptr, b_scale_ptr, topk_w_ptr, sorted_ids_ptr, expert_ids_ptr,
        num_rows, N, K, a_row_div, max_padded, total_ptr,
        stride_am, stride_ak, stride_be, stride_bk, stride_bn, stride_cm, stride_cn, stride_bse, stride_bsn,
        GATED: tl.constexpr, MUL_WEIGHT: tl.constexpr, USE_FP8: tl.constexpr, DOT_F32: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
    # a: [rows_a, K] (x [T, H] for gate_up with a_row_div = top_k; h [T*k, I] for down with 1)
    # b: [E, K, N or 2N] input-major expert weights ([gate | up] when GATED)
    # c: [T*k, N] written at flat row (token * k + slot); sorted_ids: [max_padded], pad = num_rows
    # expert_ids: [max_padded / BLOCK_M]; total: [1] rows of sorted_ids in use (device memory: the
    # grid covers max_padded and blocks past the count exit, so the host never reads it)
    # a_scale: [rows_a] (fp8 per token); b_scale: [E, 1, N or 2N]
    pid = tl.program_id(0)
    num_pid_m = max_padded // BLOCK_M
    num_pid_n = tl.cdiv(N, BLOCK_N)
    # Grouped order: consecutive programs share B tiles (an expert's blocks are adjacent).
    pid_m, pid_n = grouped_tile(pid, num_pid_m, num_pid_n, GROUP_M)
    if pid_m * BLOCK_M >= tl.load(total_ptr):
        return

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    flat = tl.load(sorted_ids_ptr + offs_m)  # max_padded is a multiple of BLOCK_M: in bounds
    row_ok = flat < num_rows
    a_rows = (flat // a_row_div).to(tl.int64)
    expert = tl.load(expert_ids_ptr + pid_m).to(tl.int64)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = offs_n < N
    offs_k = tl.arange(0, BLOCK_K)

    a_ptrs = a_ptr + a_rows[:, None] * stride_am + offs_k[None, :] * stride_ak
    b_ptrs = b_ptr + expert * stride_be + offs_k[:, None] * stride_bk + offs_n[None, :] * stride_bn
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc_up = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for kb in range(0, tl.cdiv(K, BLOCK_K)):
        k_ok = offs_k < K - kb * BLOCK_K
        a = tl.load(a_ptrs, mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        b = tl.load(b_ptrs, mask=k_ok[:, None] & n_ok[None, :], other=0.0)
        if DOT_F32:
            a = a.to(tl.float32)
            b = b.to(tl.float32)
        acc = tl.dot(a, b, acc)
        if GATED:
            b_up = tl.load(b_ptrs + N * stride_bn, mask=k_ok[:, None] & n_ok[None, :], other=0.0)
            if DOT_F32:
                b_up = b_up.to(tl.float32)
            acc_up = tl.dot(a, b_up, acc_up)
        a_ptrs += BLOCK_K * stride_ak
        b_ptrs += BLOCK_K * stride_bk

    # Epilogue in fp32. The routing weight multiplies the expert INPUT; by linearity that is the
    # accumulator (exact, and for FP8 q(w*x) = sign(w) q(x) with scale |w| s(x)).
    if USE_FP8:
        a_s = tl.load(a_scale_ptr + a_rows, mask=row_ok, other=0.0)
        bs_ptrs = b_scale_ptr + expert * stride_bse + offs_n * stride_bsn
        acc = acc * a_s[:, None] * tl.load(bs_ptrs, mask=n_ok, other=0.0)[None, :]
        if GATED:
            acc_up = acc_up * a_s[:, None] * tl.load(bs_ptrs + N * stride_bsn, mask=n_ok, other=0.0)[None, :]
    if MUL_WEIGHT:
        w = tl.load(topk_w_ptr + flat, mask=row_ok, other=0.0)
        acc = acc * w[:, None]
        acc_up = acc_up * w[:, None]
    if GATED:
        acc = acc / (1.0 + tl.exp(-acc)) * acc_up  # silu(gate) * up
    c_ptrs = c_ptr + flat.to(tl.int64)[:, None] * stride_cm + offs_n[None, :] * stride_cn
    tl.store(c_ptrs, acc.to(c_ptr.dtype.element_ty), mask=row_ok[:, None] & n_ok[None, :])
