"""Decode attention over the paged KV cache, split over the key range (flash-decoding): each program
takes one (sequence, kv head, split) and all query heads of that GQA group; a second kernel merges
the splits. Only the visible slot range [lo, hi) is read: hi = q_pos - first_pos + 1 (causal),
lo = start of the query's chunk (chunked layers). bf16/fp16 or fp8 KV with per-slot scales read through
strides (0 strides give per-tensor / per-head scales), folded into the scores and into p."""
import triton
import triton.language as tl

from amd_llama4.ops.triton.kernels.paged_prefill import slot_scale
from amd_llama4.ops.triton.kernels.tiles import online_softmax_step


@triton.jit
def paged_decode_kernel(
        q_ptr, kc_ptr, vc_ptr, bt_ptr, seqlen_ptr, firstpos_ptr, qpos_ptr, ks_ptr, vs_ptr,
        po_ptr, pm_ptr, pl_ptr, sm_scale, chunk_size, GQA, page_size, num_splits,
        stride_qb, stride_qh, stride_kcb, stride_kcs, stride_kch, stride_vcb, stride_vcs, stride_vch,
        stride_btb, stride_ksb, stride_kss, stride_ksh, stride_vsb, stride_vss, stride_vsh,
        stride_pob, stride_poh, stride_pos, stride_pmb, stride_pmh,
        CHUNKED: tl.constexpr, KV_FP8: tl.constexpr, DOT_F32: tl.constexpr,
        BLOCK_N: tl.constexpr, HEAD_D: tl.constexpr, QH: tl.constexpr):
    # q: [B, Hq, D]; caches: [num_blocks, page_size, Hkv, D]; block_tables: [B, max_blocks]
    # partials: po [B, Hq, num_splits, D] fp32, pm / pl [B, Hq, num_splits] (log2-domain max, sum)
    b = tl.program_id(0).to(tl.int64)
    kvh = tl.program_id(1)
    split = tl.program_id(2)
    seq_len = tl.load(seqlen_ptr + b)
    first = tl.load(firstpos_ptr + b)
    qp = tl.load(qpos_ptr + b)
    hi = tl.minimum(seq_len, qp - first + 1)
    lo = 0
    if CHUNKED:
        lo = tl.maximum((qp // chunk_size) * chunk_size - first, 0)
    n = tl.maximum(hi - lo, 0)
    per = tl.cdiv(tl.cdiv(n, num_splits), BLOCK_N) * BLOCK_N
    s0 = lo + split * per
    s1 = tl.minimum(s0 + per, hi)

    offs_h = tl.arange(0, QH)
    h_ok = offs_h < GQA
    heads = kvh * GQA + offs_h
    offs_d = tl.arange(0, HEAD_D)
    q = tl.load(q_ptr + b * stride_qb + heads[:, None] * stride_qh + offs_d[None, :], mask=h_ok[:, None], other=0.0)
    if DOT_F32:
        q = q.to(tl.float32)
    qk_scale = sm_scale * 1.4426950408889634
    m_i = tl.zeros([QH], dtype=tl.float32) - 1.0e30
    l_i = tl.zeros([QH], dtype=tl.float32)
    acc = tl.zeros([QH, HEAD_D], dtype=tl.float32)
    for start in range(s0, s1, BLOCK_N):
        slots = start + tl.arange(0, BLOCK_N)
        ok = slots < s1
        phys = tl.load(bt_ptr + b * stride_btb + slots // page_size, mask=ok, other=0).to(tl.int64)
        off = slots % page_size
        k = tl.load(kc_ptr + phys[:, None] * stride_kcb + off[:, None] * stride_kcs + kvh * stride_kch
                    + offs_d[None, :], mask=ok[:, None], other=0.0)
        v = tl.load(vc_ptr + phys[:, None] * stride_vcb + off[:, None] * stride_vcs + kvh * stride_vch
                    + offs_d[None, :], mask=ok[:, None], other=0.0)
        if KV_FP8:  # dequantise to the query dtype; the scales are folded into s and p
            k = k.to(q.dtype)
            v = v.to(q.dtype)
        if DOT_F32:
            k = k.to(tl.float32)
            v = v.to(tl.float32)
        s = tl.dot(q, tl.trans(k)) * qk_scale
        if KV_FP8:
            s = s * slot_scale(ks_ptr, phys, off, kvh, stride_ksb, stride_kss, stride_ksh)[None, :]
        s = tl.where(ok[None, :], s, float("-inf"))
        if KV_FP8:
            m_new = tl.maximum(m_i, tl.max(s, axis=1))
            alpha = tl.exp2(m_i - m_new)
            p = tl.exp2(s - m_new[:, None])
            l_i = l_i * alpha + tl.sum(p, axis=1)
            p = p * slot_scale(vs_ptr, phys, off, kvh, stride_vsb, stride_vss, stride_vsh)[None, :]
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
            m_i = m_new
        else:
            m_i, l_i, acc = online_softmax_step(m_i, l_i, acc, s, v)
    po = po_ptr + b * stride_pob + heads[:, None] * stride_poh + split * stride_pos + offs_d[None, :]
    tl.store(po, acc, mask=h_ok[:, None])
    pm = b * stride_pmb + heads * stride_pmh + split
    tl.store(pm_ptr + pm, m_i, mask=h_ok)
    tl.store(pl_ptr + pm, l_i, mask=h_ok)


@triton.jit
def paged_reduce_kernel(po_ptr, pm_ptr, pl_ptr, o_ptr, num_splits,
                        stride_pob, stride_poh, stride_pos, stride_pmb, stride_pmh, stride_ob, stride_oh,
                        SPLITS: tl.constexpr, HEAD_D: tl.constexpr):
    # merges the splits of one (sequence, query head): o = sum_s 2^(m_s - M) acc_s / sum_s 2^(m_s - M) l_s
    b = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1)
    offs_s = tl.arange(0, SPLITS)
    s_ok = offs_s < num_splits
    offs_d = tl.arange(0, HEAD_D)
    m = tl.load(pm_ptr + b * stride_pmb + h * stride_pmh + offs_s, mask=s_ok, other=-1.0e30)
    l = tl.load(pl_ptr + b * stride_pmb + h * stride_pmh + offs_s, mask=s_ok, other=0.0)
    w = tl.exp2(m - tl.max(m, axis=0))
    acc = tl.load(po_ptr + b * stride_pob + h * stride_poh + offs_s[:, None] * stride_pos + offs_d[None, :],
                  mask=s_ok[:, None], other=0.0)
    o = tl.sum(acc * w[:, None], axis=0) / tl.sum(l * w, axis=0)
    tl.store(o_ptr + b * stride_ob + h * stride_oh + offs_d, o.to(o_ptr.dtype.element_ty))
