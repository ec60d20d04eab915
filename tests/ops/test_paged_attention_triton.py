"""Triton `paged_attention` (varlen paged prefill + split-K decode) against the reference, in the
interpreter on CPU (fp32: the interpreter lacks bf16 arithmetic; bf16 is compile-checked by
tests/tools/test_isa.py) and compiled on a GPU."""
import pytest
import torch
from triton_env import require_triton

DEV = require_triton()

from amd_llama4.ops.paged_attention import paged_attention  # noqa: E402
from paged_attention_cases import TOL, args, make_case, quantize_kv  # noqa: E402

DT = torch.float32 if DEV == "cpu" else torch.bfloat16
MIXED = ([1, 19, 129, 40], [1, 7, 129, 3], [0, 0, 0, 64])


def _triton(*a, **kw):
    from amd_llama4.ops.triton.attention import paged_attention as tpa

    return tpa(*a, **kw)


@pytest.mark.parametrize("chunk", [None, 32])
@pytest.mark.parametrize("page", [1, 3, 16])
def test_varlen_prefill_mixed_batch(chunk, page):
    case = make_case(*MIXED, Hq=4, Hkv=2, D=32, page=page, dtype=DT, seed=page, device=DEV)
    a = args(case, 0.125, chunk)
    torch.testing.assert_close(_triton(*a), paged_attention.reference(*a), **TOL[DT])


@pytest.mark.parametrize("Hq,Hkv", [(1, 1), (4, 1), (5, 5)])
def test_varlen_heads_single_sequence(Hq, Hkv):
    case = make_case([7], [7], Hq=Hq, Hkv=Hkv, D=64, page=3, dtype=DT, seed=Hq, device=DEV)
    a = args(case, 0.1, 4)
    torch.testing.assert_close(_triton(*a), paged_attention.reference(*a), **TOL[DT])


def test_decode_step_takes_split_k_kernel_and_17_sequences():
    lens = [1 + 13 * i for i in range(17)]
    case = make_case(lens, [1] * 17, Hq=4, Hkv=2, D=16, page=16, dtype=DT, seed=3, device=DEV)
    for chunk, splits in ((None, None), (32, 3)):
        a = args(case, 0.1, chunk)
        torch.testing.assert_close(_triton(*a, num_splits=splits), paged_attention.reference(*a), **TOL[DT])


def test_non_contiguous_q_and_table():
    case = make_case(*MIXED[:2], Hq=4, Hkv=2, D=32, page=16, dtype=DT, seed=5, device=DEV)
    T = case["q"].shape[0]
    case["q"] = torch.randn(4, T, 32, device=DEV).to(DT).transpose(0, 1)
    bt = torch.zeros(4, 2 * case["block_tables"].shape[1], dtype=torch.int32, device=DEV)
    bt[:, ::2] = case["block_tables"]
    case["block_tables"] = bt[:, ::2]
    a = args(case, 0.2, 16)
    torch.testing.assert_close(_triton(*a), paged_attention.reference(*a), **TOL[DT])


@pytest.mark.parametrize("kind", ["tensor", "head", "token"])
@pytest.mark.parametrize("decode", [False, True])
def test_fp8_kv_scales(kind, decode):
    fmt = "e4m3fnuz" if DEV != "cpu" and torch.version.hip else "e4m3fn"
    lens, nq, first = MIXED
    case = make_case(lens, [1] * 4 if decode else nq, first, Hq=4, Hkv=2, D=32, page=16, dtype=DT, seed=6,
                     device=DEV)
    (kq, ks), (vq, vs) = quantize_kv(case["k_cache"].cpu(), fmt, kind), quantize_kv(case["v_cache"].cpu(), fmt, kind)
    ks, vs = (s.to(DEV) if isinstance(s, torch.Tensor) else s for s in (ks, vs))
    a = args(dict(case, k_cache=kq.to(DEV), v_cache=vq.to(DEV)), 0.125, 32, ks, vs)
    out = _triton(*a)
    torch.testing.assert_close(out, paged_attention.reference(*a), **TOL[DT])
    full = paged_attention.reference(*args(case, 0.125, 32))
    assert (out.float() - full.float()).abs().max() < 0.25


def test_dispatch_registers_triton():
    case = make_case([5, 9], [1, 2], Hq=4, Hkv=2, D=16, page=4, dtype=DT, device=DEV)
    a = args(case, 0.25)
    torch.testing.assert_close(paged_attention(*a, backend="triton"), paged_attention.reference(*a), **TOL[DT])


def test_input_errors():
    case = make_case([5, 9], [1, 2], Hq=4, Hkv=2, D=16, page=4, dtype=DT, device=DEV)
    a = list(args(case, 0.25))
    with pytest.raises(ValueError, match="q_pos"):
        _triton(*a[:7], a[7][:1], *a[8:])
    odd = make_case([5], [2], Hq=2, Hkv=1, D=12, page=4, dtype=DT, device=DEV)
    with pytest.raises(ValueError, match="head dim 12"):
        _triton(*args(odd, 0.25))
