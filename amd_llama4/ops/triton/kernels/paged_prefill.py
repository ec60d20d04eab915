"""Varlen attention over the paged KV cache: the flat new tokens of B sequences (prefill pieces and
decodes of one step) attend to their keys through the block tables, flash-attention style (online
softmax in base 2, key tiles of BLOCK_N slots). A program takes BLOCK_M query tokens of one sequence
and one query head; programs map to sequences without host reads: sequence b owns programs
[cu[b] // BLOCK_M + b, cu[b + 1] // BLOCK_M + b + 1), an upper bound of its tiles (spare ones exit),
found by binary search over cu_seqlens_q. Only the visible slot range is read: up to the newest
query (causal) and, chunked, from the oldest query's chunk start. fp8 KV: per-slot scales read
through strides (0 strides give per-tensor / per-head scales), folded into the scores and into p."""
import triton
import triton.language as tl


@triton.jit
def find_sequence(cu_ptr, pid, num_seqs, BLOCK_M: tl.constexpr):
    """The b with cu[b] // BLOCK_M + b <= pid < cu[b + 1] // BLOCK_M + b + 1 (binary search)."""
    lo = 0
    hi = num_seqs
    while lo < hi:
        mid = (lo + hi) // 2
        start = tl.load(cu_ptr + mid) // BLOCK_M + mid
        if start <= pid:
            lo = mid + 1
        else:
            hi = mid
    return lo - 1


@triton.jit
def slot_scale(s_ptr, phys, off, kvh, stride_sb, stride_ss, stride_sh):
    # per-slot fp8 scale of kv head kvh: [BLOCK_N] fp32 (strides 0 broadcast a tensor / head scale)
    return tl.load(s_ptr + phys * stride_sb + off * stride_ss + kvh * stride_sh)


@triton.jit
def paged_prefill_kernel(
        q_ptr, kc_ptr, vc_ptr, o_ptr, bt_ptr, cu_ptr, seqlen_ptr, firstpos_ptr, qpos_ptr, ks_ptr, vs_ptr,
        sm_scale, num_seqs, Hq, GQA, page_size, chunk_size,
        stride_qt, stride_qh, stride_kcb, stride_kcs, stride_kch, stride_btb,
        stride_ksb, stride_kss, stride_ksh, stride_vsb, stride_vss, stride_vsh,
        CHUNKED: tl.constexpr, KV_FP8: tl.constexpr, DOT_F32: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_D: tl.constexpr):
    # q: [T, Hq, D]; caches: [num_blocks, page_size, Hkv, D] (v has k's strides); block_tables: [B, W];
    # cu_seqlens_q: [B + 1]; seq_lens / first_pos: [B]; q_pos: [T] -> o: [T, Hq, D] contiguous.
    # grid: (T // BLOCK_M + B, Hq)
    pid = tl.program_id(0)
    h = tl.program_id(1)
    kvh = h // GQA
    b = find_sequence(cu_ptr, pid, num_seqs, BLOCK_M)
    t_begin = tl.load(cu_ptr + b)
    t_end = tl.load(cu_ptr + b + 1)
    t0 = t_begin + (pid - (t_begin // BLOCK_M + b)) * BLOCK_M
    if t0 < t_end:
        b64 = b.to(tl.int64)
        seq_len = tl.load(seqlen_ptr + b)
        first = tl.load(firstpos_ptr + b)
        offs_m = t0 + tl.arange(0, BLOCK_M)
        m_ok = offs_m < t_end
        offs_d = tl.arange(0, HEAD_D)
        q = tl.load(q_ptr + offs_m[:, None].to(tl.int64) * stride_qt + h * stride_qh + offs_d[None, :],
                    mask=m_ok[:, None], other=0.0)
        if DOT_F32:
            q = q.to(tl.float32)
        qp = tl.load(qpos_ptr + offs_m, mask=m_ok, other=0)
        q_max = tl.max(tl.where(m_ok, qp, -2147483647), axis=0)
        hi = tl.minimum(seq_len, q_max - first + 1)
        lo = 0
        if CHUNKED:
            q_min = tl.min(tl.where(m_ok, qp, 2147483647), axis=0)
            lo = tl.maximum((q_min // chunk_size) * chunk_size - first, 0)
        lo = (lo // BLOCK_N) * BLOCK_N
        qk_scale = sm_scale * 1.4426950408889634  # base-2 softmax
        m_i = tl.zeros([BLOCK_M], dtype=tl.float32) - 1.0e30
        l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
        acc = tl.zeros([BLOCK_M, HEAD_D], dtype=tl.float32)
        for start in range(lo, hi, BLOCK_N):
            slots = start + tl.arange(0, BLOCK_N)
            ok = slots < hi
            phys = tl.load(bt_ptr + b64 * stride_btb + slots // page_size, mask=ok, other=0).to(tl.int64)
            off = slots % page_size
            kv_off = phys[:, None] * stride_kcb + off[:, None] * stride_kcs + kvh * stride_kch + offs_d[None, :]
            k = tl.load(kc_ptr + kv_off, mask=ok[:, None], other=0.0)
            v = tl.load(vc_ptr + kv_off, mask=ok[:, None], other=0.0)
            if KV_FP8:
                k = k.to(q.dtype)
                v = v.to(q.dtype)
            if DOT_F32:
                k = k.to(tl.float32)
                v = v.to(tl.float32)
            s = tl.dot(q, tl.trans(k)) * qk_scale
            if KV_FP8:
                s = s * slot_scale(ks_ptr, phys, off, kvh, stride_ksb, stride_kss, stride_ksh)[None, :]
            kp = first + slots
            vis = (kp[None, :] <= qp[:, None]) & ok[None, :]
            if CHUNKED:
                vis = vis & ((kp[None, :] // chunk_size) == (qp // chunk_size)[:, None])
            s = tl.where(vis, s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, axis=1))  # >= -1e30: rows seeing nothing get p = 0
            alpha = tl.exp2(m_i - m_new)
            p = tl.exp2(s - m_new[:, None])
            l_i = l_i * alpha + tl.sum(p, axis=1)
            if KV_FP8:
                p = p * slot_scale(vs_ptr, phys, off, kvh, stride_vsb, stride_vss, stride_vsh)[None, :]
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
            m_i = m_new
        o = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
        tl.store(o_ptr + (offs_m[:, None].to(tl.int64) * Hq + h) * HEAD_D + offs_d[None, :],
                 o.to(o_ptr.dtype.element_ty), mask=m_ok[:, None])
