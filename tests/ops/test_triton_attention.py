"""Triton attention: prefill (global causal, chunked-local, temperature, GQA, padding, empty key slots)
and paged decode (split-K, chunked layers with freed chunks, bf16/fp16 and fp8 KV) against the torch
references. Interpreter on CPU."""

import pytest
import torch
from triton_env import require_triton

DEV = require_triton()

from amd_llama4.ops.attention import attention, temperature_scale  # noqa: E402
from amd_llama4.ops.fp8 import quantize_fp8  # noqa: E402
from amd_llama4.ops.paged_attention import paged_attention_decode  # noqa: E402

DT = torch.float16 if DEV == "cpu" else torch.bfloat16  # the interpreter mis-handles bf16 arithmetic
TOL = 2e-3 if DT == torch.float16 else 2e-2


def formats():
    if DEV == "cpu":
        return ["e4m3fn", "e4m3fnuz"]
    from amd_llama4 import platform
    return [platform.fp8_format()]


def _prefill(B, S, L, Hq, Hkv, D, offset=0, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, S, Hq, D, generator=g).to(DT)
    k = torch.randn(B, L, Hkv, D, generator=g).to(DT)
    v = torch.randn(B, L, Hkv, D, generator=g).to(DT)
    k_pos = (torch.arange(L) + offset).repeat(B, 1)
    q_pos = k_pos[:, L - S:].clone()
    return [t.to(DEV) for t in (q, k, v, q_pos, k_pos)]


@pytest.mark.parametrize("chunk", [None, 16])
@pytest.mark.parametrize("B,S,L,Hq,Hkv,D", [(1, 1, 1, 2, 1, 16), (2, 7, 7, 4, 2, 32), (1, 37, 70, 5, 1, 64),
                                            (2, 70, 70, 2, 2, 16)])
def test_prefill(chunk, B, S, L, Hq, Hkv, D):
    q, k, v, qp, kp = _prefill(B, S, L, Hq, Hkv, D, offset=5, seed=S)
    out = attention(q, k, v, qp, kp, D ** -0.5, chunk, backend="triton")
    ref = attention.reference(q, k, v, qp, kp, D ** -0.5, chunk)
    torch.testing.assert_close(out, ref, atol=TOL, rtol=TOL)


def test_prefill_padding_and_empty_slots():
    q, k, v, qp, kp = _prefill(2, 20, 33, 4, 2, 32, seed=1)
    qp[1, :6] = -1  # padding queries
    kp[0, 3:9] = -1  # empty key slots (freed / not written)
    kp[1, 30:] = -1
    out = attention(q, k, v, qp, kp, 0.2, 8, backend="triton")
    ref = attention.reference(q, k, v, qp, kp, 0.2, 8)
    torch.testing.assert_close(out, ref, atol=TOL, rtol=TOL)


def test_prefill_temperature_and_noncontiguous():
    from amd_llama4.ops.triton.attention import attention as tattn
    B, S, Hq, Hkv, D = 1, 40, 4, 2, 32
    g = torch.Generator().manual_seed(4)
    qkv = torch.randn(B, S, Hq + 2 * Hkv, D, generator=g).to(DT).to(DEV)  # fused projection output
    q, k, v = qkv.split([Hq, Hkv, Hkv], dim=2)  # non-contiguous views
    pos = (torch.arange(S) + 8180).repeat(B, 1).to(DEV)  # spans the floor_scale=8192 step
    out = tattn(q, k, v, pos, pos, D ** -0.5, None, temperature=(8192, 0.1))
    qs = (q.float() * temperature_scale(pos, 8192, 0.1)[:, :, None, None]).to(DT)
    ref = attention.reference(qs, k, v, pos, pos, D ** -0.5, None)
    torch.testing.assert_close(out, ref, atol=2 * TOL, rtol=2 * TOL)


def _paged(B, Hq, Hkv, D, page, lens, first, seed=0):
    g = torch.Generator().manual_seed(seed)
    need = [-(-n // page) for n in lens]
    nb = sum(need) + 3
    kc = torch.randn(nb, page, Hkv, D, generator=g).to(DT)
    vc = torch.randn(nb, page, Hkv, D, generator=g).to(DT)
    perm = torch.randperm(nb, generator=g)
    bt = torch.zeros(B, max(need) + 1, dtype=torch.int32)  # spare column: unused entries
    i = 0
    for b, n in enumerate(need):
        bt[b, :n] = perm[i:i + n]
        i += n
    q = torch.randn(B, Hq, D, generator=g).to(DT)
    lens_t = torch.tensor(lens, dtype=torch.int32)
    first_t = torch.tensor(first, dtype=torch.int32)
    qpos = first_t + lens_t - 1
    return [t.to(DEV) for t in (q, kc, vc, bt, lens_t, first_t, qpos)]


@pytest.mark.parametrize("chunk", [None, 32])
@pytest.mark.parametrize("splits", [None, 1, 3])
def test_paged_decode(chunk, splits):
    from amd_llama4.ops.triton.attention import paged_attention_decode as tpaged
    # seq 0: one key; seq 1: crosses a chunk boundary; seq 2: chunked layer whose first chunks were
    # freed (first_pos 64 = 2 chunks of 32 dropped); seq 3: ends exactly on a chunk boundary.
    q, kc, vc, bt, lens, first, qpos = _paged(4, 10, 2, 32, 16, [1, 45, 50, 64], [0, 0, 64, 0], seed=7)
    out = tpaged(q, kc, vc, bt, lens, first, qpos, 0.17, chunk, num_splits=splits)
    ref = paged_attention_decode.reference(q, kc, vc, bt, lens, first, qpos, 0.17, chunk)
    torch.testing.assert_close(out, ref, atol=TOL, rtol=TOL)


def test_paged_decode_dispatch_odd_page():
    q, kc, vc, bt, lens, first, qpos = _paged(2, 4, 4, 16, 5, [7, 23], [0, 3], seed=2)
    out = paged_attention_decode(q, kc, vc, bt, lens, first, qpos, 0.25, 8, backend="triton")
    ref = paged_attention_decode.reference(q, kc, vc, bt, lens, first, qpos, 0.25, 8)
    torch.testing.assert_close(out, ref, atol=TOL, rtol=TOL)


@pytest.mark.parametrize("fmt", formats())
@pytest.mark.parametrize("per_head", [False, True])
def test_paged_decode_fp8_kv(fmt, per_head):
    q, kc, vc, bt, lens, first, qpos = _paged(3, 8, 2, 32, 16, [5, 40, 33], [0, 0, 32], seed=3)
    gran = "col" if per_head else "tensor"
    # per head: one scale per kv head = "col" granularity of a [tokens, Hkv] amax view
    def q8(c):
        if not per_head:
            qc, s = quantize_fp8(c.float().reshape(-1, c.shape[-1]), fmt, gran)
            return qc.reshape(c.shape), s.reshape(())
        amax = c.float().abs().amax(dim=(0, 1, 3))  # [Hkv]
        s = amax.clamp(min=1e-12) / {"e4m3fn": 448.0, "e4m3fnuz": 240.0}[fmt]
        qc, _ = quantize_fp8(c.float().permute(0, 1, 3, 2).reshape(-1, c.shape[2]), fmt, "col", scale=s[None])
        return qc.reshape(c.shape[0], c.shape[1], c.shape[3], c.shape[2]).permute(0, 1, 3, 2).contiguous(), s
    kq, ks = q8(kc)
    vq, vs = q8(vc)
    out = paged_attention_decode(q, kq, vq, bt, lens, first, qpos, 0.2, 32, ks, vs, backend="triton")
    ref = paged_attention_decode.reference(q, kq, vq, bt, lens, first, qpos, 0.2, 32, ks, vs)
    torch.testing.assert_close(out, ref, atol=2 * TOL, rtol=2 * TOL)
    # and fp8 KV stays near the unquantised cache
    full = paged_attention_decode.reference(q, kc, vc, bt, lens, first, qpos, 0.2, 32)
    assert (out.float() - full.float()).abs().max() < 0.15


def test_paged_decode_input_errors():
    q, kc, vc, bt, lens, first, qpos = _paged(2, 4, 2, 16, 8, [3, 9], [0, 0])
    with pytest.raises(ValueError, match="seq_lens"):
        paged_attention_decode(q, kc, vc, bt, lens[:1], first, qpos, 0.25, backend="triton")
    with pytest.raises(ValueError, match="k_scale"):
        paged_attention_decode(q, kc.to(torch.float8_e4m3fn), vc.to(torch.float8_e4m3fn), bt, lens, first, qpos,
                               0.25, backend="triton")
