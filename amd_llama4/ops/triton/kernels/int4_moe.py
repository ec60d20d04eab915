"""w4a16 grouped expert GEMM over expert-sorted tokens (one source for gate_up + SiLU-mul and for
down), the int4 counterpart of kernels/moe.py. Expert weights are output-major packed int4
(amd_llama4/ops/int4.py): q [E, N_total, K/2], scales / zeros [E, N_total, K/G]; for gate_up the up
rows follow the N gate rows. Nibbles are unpacked as in int4_gemm.py (even / odd columns of a)."""
import triton
import triton.language as tl

from amd_llama4.ops.triton.kernels.int4_gemm import int4_tile_dot
from amd_llama4.ops.triton.kernels.tiles import grouped_tile


@triton.jit
def int4_moe_kernel(
        a_ptr, q_ptr, s_ptr, z_ptr, c_ptr, topk_w_ptr, sorted_ids_ptr, expert_ids_ptr,
        num_rows, N, K, group_size, a_row_div, max_padded, total_ptr,
        stride_am, stride_ak, stride_qe, stride_qn, stride_qk, stride_se, stride_sn, stride_sg, stride_cm, stride_cn,
        GATED: tl.constexpr, MUL_WEIGHT: tl.constexpr, HAS_ZERO: tl.constexpr, DOT_F32: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
    # a: [rows_a, K] (x [T, H] with a_row_div = top_k for gate_up; h [T*k, I] with 1 for down)
    # c: [T*k, N] at flat row (token * k + slot); sorted_ids [max_padded] (pad = num_rows),
    # expert_ids [max_padded / BLOCK_M], total [1]: rows in use (device memory, no host sync).
    # MUL_WEIGHT: the routing weight scales the expert INPUT in fp32, rounded to a's dtype (as the
    # reference). GATED: c = silu(a @ gate^T) * (a @ up^T), rounded to c's dtype.
    pid = tl.program_id(0)
    pid_m, pid_n = grouped_tile(pid, max_padded // BLOCK_M, tl.cdiv(N, BLOCK_N), GROUP_M)
    if pid_m * BLOCK_M >= tl.load(total_ptr):
        return
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    flat = tl.load(sorted_ids_ptr + offs_m)
    row_ok = flat < num_rows
    a_rows = (flat // a_row_div).to(tl.int64)
    expert = tl.load(expert_ids_ptr + pid_m).to(tl.int64)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = offs_n < N
    rows_n = tl.where(n_ok, offs_n, 0).to(tl.int64)
    offs_h = tl.arange(0, BLOCK_K // 2)
    if MUL_WEIGHT:
        w = tl.load(topk_w_ptr + flat, mask=row_ok, other=0.0).to(tl.float32)
    a_ptrs = a_ptr + a_rows[:, None] * stride_am + (2 * offs_h)[None, :] * stride_ak
    q_ptrs = q_ptr + expert * stride_qe + rows_n[None, :] * stride_qn + offs_h[:, None] * stride_qk
    s_ptrs = s_ptr + expert * stride_se + rows_n * stride_sn
    z_ptrs = z_ptr + expert * stride_se + rows_n * stride_sn
    up_q = N * stride_qn  # the up rows follow the gate rows
    up_s = N * stride_sn
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc_up = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for kb in range(0, K // BLOCK_K):
        a_e = tl.load(a_ptrs, mask=row_ok[:, None], other=0.0)
        a_o = tl.load(a_ptrs + stride_ak, mask=row_ok[:, None], other=0.0)
        if MUL_WEIGHT:
            a_e = (a_e.to(tl.float32) * w[:, None]).to(a_ptr.dtype.element_ty)
            a_o = (a_o.to(tl.float32) * w[:, None]).to(a_ptr.dtype.element_ty)
        g = ((kb * BLOCK_K) // group_size) * stride_sg
        if HAS_ZERO:
            zero = tl.load(z_ptrs + g).to(tl.float32)
        else:
            zero = tl.full((BLOCK_N,), 8.0, tl.float32)
        acc += int4_tile_dot(a_e, a_o, tl.load(q_ptrs), zero, a_ptr.dtype.element_ty, DOT_F32) * \
            tl.load(s_ptrs + g).to(tl.float32)[None, :]
        if GATED:
            if HAS_ZERO:
                zero = tl.load(z_ptrs + up_s + g).to(tl.float32)
            acc_up += int4_tile_dot(a_e, a_o, tl.load(q_ptrs + up_q), zero, a_ptr.dtype.element_ty, DOT_F32) * \
                tl.load(s_ptrs + up_s + g).to(tl.float32)[None, :]
        a_ptrs += BLOCK_K * stride_ak
        q_ptrs += (BLOCK_K // 2) * stride_qk
    if GATED:
        acc = acc / (1.0 + tl.exp(-acc)) * acc_up  # silu(gate) * up
    c_ptrs = c_ptr + flat.to(tl.int64)[:, None] * stride_cm + offs_n[None, :] * stride_cn
    tl.store(c_ptrs, acc.to(c_ptr.dtype.element_ty), mask=row_ok[:, None] & n_ok[None, :])
