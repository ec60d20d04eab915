"""Prefill attention over explicit positions (global causal or chunked-local causal), with optional
in-kernel Llama 4 temperature scaling of the queries. Flash-attention online softmax in base 2."""
import triton
import triton.language as tl

from amd_llama4.ops.triton.kernels.tiles import online_softmax_step

LOG2E = 1.4426950408889634


@triton.jit
def attn_prefill_kernel(
        q_ptr, k_ptr, v_ptr, o_ptr, qpos_ptr, kpos_ptr, sm_scale, S, L, Hq, GQA, chunk_size,
        floor_scale, attn_scale,
        stride_qb, stride_qs, stride_qh, stride_kb, stride_kl, stride_kh,
        CHUNKED: tl.constexpr, HAS_TEMP: tl.constexpr, DOT_F32: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_D: tl.constexpr):
    # q: [B, S, Hq, D]; k, v: [B, L, Hkv, D]; q_pos: [B, S]; k_pos: [B, L] (-1 = empty) -> o: [B, S, Hq, D]
    # grid: (cdiv(S, BLOCK_M), B * Hq). v has k's strides; o, q_pos, k_pos are contiguous (the launcher
    # ensures it): fewer scalar arguments keep the AMD build free of SGPR spills.
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // Hq).to(tl.int64)
    h = bh % Hq
    kvh = h // GQA
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_D)
    m_ok = offs_m < S
    q = tl.load(q_ptr + b * stride_qb + offs_m[:, None] * stride_qs + h * stride_qh + offs_d[None, :],
                mask=m_ok[:, None], other=0.0)
    qp = tl.load(qpos_ptr + b * S + offs_m, mask=m_ok, other=0)
    row_scale = tl.zeros([BLOCK_M], dtype=tl.float32) + sm_scale * 1.4426950408889634
    if HAS_TEMP:
        t = tl.log(1.0 + tl.floor((qp.to(tl.float32) + 1.0) / floor_scale)) * attn_scale + 1.0
        row_scale = row_scale * t
    if DOT_F32:
        q = q.to(tl.float32)
    q_chunk = qp // chunk_size
    q_pad = qp < 0  # padding queries see every slot (their output is dropped)
    q_max = tl.max(tl.where(m_ok, qp, -1), axis=0)
    q_min = tl.min(tl.where(m_ok & (qp >= 0), qp, 2147483647), axis=0)
    any_pad = tl.max((q_pad & m_ok).to(tl.int32), axis=0) > 0

    m_i = tl.zeros([BLOCK_M], dtype=tl.float32) - 1.0e30
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_D], dtype=tl.float32)
    for start in range(0, L, BLOCK_N):
        offs_n = start + tl.arange(0, BLOCK_N)
        n_ok = offs_n < L
        kp = tl.load(kpos_ptr + b * L + offs_n, mask=n_ok, other=-1)
        # Skip tiles no query of this block can see (most of them for causal / chunked masks).
        live = (kp >= 0) & (kp <= q_max)
        if CHUNKED:
            live = live & (kp >= (q_min // chunk_size) * chunk_size)
        if (tl.max(live.to(tl.int32), axis=0) > 0) | any_pad:
            k = tl.load(k_ptr + b * stride_kb + offs_n[:, None] * stride_kl + kvh * stride_kh + offs_d[None, :],
                        mask=n_ok[:, None], other=0.0)
            v = tl.load(v_ptr + b * stride_kb + offs_n[:, None] * stride_kl + kvh * stride_kh + offs_d[None, :],
                        mask=n_ok[:, None], other=0.0)
            if DOT_F32:
                k = k.to(tl.float32)
                v = v.to(tl.float32)
            s = tl.dot(q, tl.trans(k)) * row_scale[:, None]
            vis = (kp[None, :] <= qp[:, None]) & (kp[None, :] >= 0)
            if CHUNKED:
                vis = vis & ((kp[None, :] // chunk_size) == q_chunk[:, None])
            vis = (vis | q_pad[:, None]) & n_ok[None, :]
            s = tl.where(vis, s, float("-inf"))
            m_i, l_i, acc = online_softmax_step(m_i, l_i, acc, s, v)
    o = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]  # rows past S (masked out) have no keys
    tl.store(o_ptr + ((b * S + offs_m[:, None]) * Hq + h) * HEAD_D + offs_d[None, :],
             o.to(o_ptr.dtype.element_ty), mask=m_ok[:, None])
