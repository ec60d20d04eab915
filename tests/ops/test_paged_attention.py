"""`ops.paged_attention` (ragged prefill pieces + decodes over a paged cache): the native CPU kernel and
the torch backend against the reference (gather through the table, dequantise, attention.reference).
Odd token counts (1, 7, 129), block sizes 1/3/16, head dims 64/128, GQA 1/4/5, chunked layers with
freed chunks, B = 1 and 17, non-contiguous q, fp8 KV with per-tensor/head/token scales, bf16."""
import os
import subprocess
import sys

import pytest
import torch

from amd_llama4.ops import dispatch
from amd_llama4.ops.paged_attention import paged_attention
from native_helpers import require_native
from paged_attention_cases import TOL, args, make_case, quantize_kv

# (lens, nq, first): a decode with one key; a 7-token prefill piece after 12 cached keys; a 129-token
# prompt; a chunked layer whose first two 32-token chunks were freed (first_pos 64), its 3 new tokens
# crossing into the next chunk.
MIXED = ([1, 19, 129, 40], [1, 7, 129, 3], [0, 0, 0, 64])


def _native(*a):
    require_native()
    from amd_llama4.ops import native

    if not hasattr(native._C, "paged_attention"):
        pytest.fail("amd_llama4._C predates paged_attention: rebuild it (pip install -e .)")
    return paged_attention(*a, backend="native")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("chunk", [None, 32])
@pytest.mark.parametrize("page", [1, 3, 16])
def test_native_mixed_batch(dtype, chunk, page):
    case = make_case(*MIXED, Hq=8, Hkv=2, D=64, page=page, dtype=dtype, seed=page)
    a = args(case, 0.125, chunk)
    torch.testing.assert_close(_native(*a), paged_attention.reference(*a), **TOL[dtype])


@pytest.mark.parametrize("Hq,Hkv,D", [(1, 1, 64), (4, 1, 128), (5, 1, 64), (10, 2, 128), (5, 5, 16), (3, 3, 12)])
def test_native_heads_and_dims(Hq, Hkv, D):
    case = make_case([7, 30], [7, 1], Hq=Hq, Hkv=Hkv, D=D, page=3, seed=D + Hq)
    a = args(case, D ** -0.5, 8)
    torch.testing.assert_close(_native(*a), paged_attention.reference(*a), **TOL[torch.float32])


def test_native_batch_of_17_decodes_and_single_sequence():
    lens = [1 + 13 * i for i in range(17)]
    case = make_case(lens, [1] * 17, Hq=8, Hkv=8, D=64, page=16, seed=3)
    a = args(case, 0.1, None)
    torch.testing.assert_close(_native(*a), paged_attention.reference(*a), **TOL[torch.float32])
    one = make_case([129], [129], Hq=4, Hkv=2, D=64, page=16, seed=4)
    for chunk in (None, 16):
        a = args(one, 0.1, chunk)
        torch.testing.assert_close(_native(*a), paged_attention.reference(*a), **TOL[torch.float32])


def test_native_non_contiguous_inputs():
    case = make_case(*MIXED, Hq=4, Hkv=2, D=64, page=16, seed=5)
    wide = torch.randn(case["q"].shape[0], 4, 2 * 64)
    case["q"] = wide[..., ::2]  # head dim strided: the launcher copies
    case2 = dict(case, q=torch.randn(4, case["q"].shape[0], 64).transpose(0, 1))  # token stride != Hq*D
    for c in (case, case2):
        assert not c["q"].is_contiguous()
        a = args(c, 0.2, 32)
        torch.testing.assert_close(_native(*a), paged_attention.reference(*a), **TOL[torch.float32])
    # a cache whose slot dim is padded (strides of a bigger allocation) and a table with a wider row stride
    big = torch.randn(*case["k_cache"].shape[:3], 80)
    big[..., :64] = case["k_cache"]
    bt = torch.zeros(case["block_tables"].shape[0], 2 * case["block_tables"].shape[1], dtype=torch.int32)
    bt[:, ::2] = case["block_tables"]
    c3 = dict(case2, k_cache=big[..., :64], block_tables=bt[:, ::2])
    a3 = args(c3, 0.2, 32)
    torch.testing.assert_close(_native(*a3), paged_attention.reference(*a3), **TOL[torch.float32])


@pytest.mark.parametrize("fmt", ["e4m3fn", "e4m3fnuz"])
@pytest.mark.parametrize("kind", ["tensor", "head", "token"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_native_fp8_kv(fmt, kind, dtype):
    case = make_case(*MIXED, Hq=8, Hkv=2, D=64, page=16, dtype=dtype, seed=6)
    (kq, ks), (vq, vs) = quantize_kv(case["k_cache"], fmt, kind), quantize_kv(case["v_cache"], fmt, kind)
    a = args(dict(case, k_cache=kq, v_cache=vq), 0.125, 32, ks, vs)
    out = _native(*a)
    torch.testing.assert_close(out, paged_attention.reference(*a), **TOL[dtype])
    full = paged_attention.reference(*args(case, 0.125, 32))
    assert (out.float() - full.float()).abs().max() < 0.25  # fp8 KV stays near the unquantised cache
    if kind == "token":  # per-token scales matter: a per-tensor scale gives other numbers
        wrong = _native(*args(dict(case, k_cache=kq, v_cache=vq), 0.125, 32, ks.amax(), vs.amax()))
        assert (wrong.float() - out.float()).abs().max() > 0.05


def test_native_errors_name_the_tensor():
    case = make_case([5, 9], [1, 2], Hq=4, Hkv=2, D=16, page=4)
    a = list(args(case, 0.25))
    with pytest.raises(ValueError, match="q_pos"):
        _native(*a[:7], a[7][:1], *a[8:])
    with pytest.raises(ValueError, match="cu_seqlens_q"):
        _native(*a[:4], a[4][:2], *a[5:])
    bad = a[3].clone()
    bad[1, 0] = 10_000
    with pytest.raises(ValueError, match=r"block_tables\[1, 0\]=10000"):
        _native(*a[:3], bad, *a[4:])
    with pytest.raises(ValueError, match="seq_lens"):
        _native(*a[:5], torch.tensor([5, 900], dtype=torch.int32), *a[6:])
    with pytest.raises(ValueError, match="k_scale"):
        kq, _ = quantize_kv(case["k_cache"], "e4m3fn", "tensor")
        _native(a[0], kq, kq, *a[3:])
    with pytest.raises(ValueError, match="k_scale"):
        kq, _ = quantize_kv(case["k_cache"], "e4m3fn", "tensor")
        _native(a[0], kq, kq, *a[3:10], torch.ones(3), torch.ones(()))


def test_dispatch_picks_native_on_cpu():
    require_native()
    case = make_case([5], [1], Hq=4, Hkv=2, D=16, page=4)
    fn = dispatch.resolve("paged_attention", args(case, 0.25), {})
    assert fn.__module__ == "amd_llama4.ops.native"


@pytest.mark.parametrize("chunk", [None, 32])
def test_torch_backend(chunk):
    # a decode-only step runs the static (sync-free) form, a mixed one the per-sequence loop
    dec = make_case([1, 19, 129, 40], [1, 1, 1, 1], [0, 0, 0, 64], Hq=8, Hkv=2, D=64, page=16, seed=8)
    kq, ks = quantize_kv(dec["k_cache"], "e4m3fn", "token")
    vq, vs = quantize_kv(dec["v_cache"], "e4m3fn", "token")
    for case, sc in ((dec, (None, None)), (make_case(*MIXED, page=3, seed=9), (None, None)),
                     (dict(dec, k_cache=kq, v_cache=vq), (ks, vs))):
        a = args(case, 0.125, chunk, *sc)
        torch.testing.assert_close(paged_attention(*a, backend="torch"), paged_attention.reference(*a),
                                   **TOL[torch.float32])


def test_reference_errors():
    case = make_case([5, 9], [1, 2], Hq=4, Hkv=2, D=16, page=4)
    a = list(args(case, 0.25))
    with pytest.raises(ValueError, match="cu_seqlens_q must be"):
        paged_attention.reference(*a[:4], a[4][:2], *a[5:])
    with pytest.raises(ValueError, match="Hq=4 is not a multiple of the caches' Hkv=3"):
        kc = torch.zeros(4, 4, 3, 16)
        paged_attention.reference(a[0], kc, kc, *a[3:])
    with pytest.raises(ValueError, match="v_scale must be"):
        kq, _ = quantize_kv(case["k_cache"], "e4m3fn", "tensor")
        paged_attention.reference(a[0], kq, kq, *a[3:10], torch.ones(()), torch.ones(5))


_SUBPROCESS = r"""
import torch
from amd_llama4.ops.paged_attention import paged_attention
from paged_attention_cases import TOL, args, make_case, quantize_kv
# one long sequence among short ones: with several threads its key range splits (flash-decoding)
lens = [900] + [20 + 7 * i for i in range(6)]
for nq in ([1] * 7, [1, 5, 1, 1, 1, 1, 1]):
    case = make_case(lens, nq, Hq=10, Hkv=2, D=128, page=16, seed=11)
    for chunk in (None, 256):
        a = args(case, 0.09, chunk)
        torch.testing.assert_close(paged_attention(*a, backend="native"), paged_attention.reference(*a),
                                   **TOL[torch.float32])
    kq, ks = quantize_kv(case["k_cache"], "e4m3fnuz", "token")
    vq, vs = quantize_kv(case["v_cache"], "e4m3fnuz", "token")
    a = args(dict(case, k_cache=kq, v_cache=vq), 0.09, None, ks, vs)
    torch.testing.assert_close(paged_attention(*a, backend="native"), paged_attention.reference(*a),
                               **TOL[torch.float32])
"""


@pytest.mark.parametrize("isa", ["default", "avx2", "base"])
def test_native_isas_and_split_keys(isa):
    """The AVX-512, AVX2 and portable kernels (forced in a subprocess), with 4 threads so that the long
    sequence's keys are split and merged."""
    require_native()
    env = {**os.environ, "OMP_NUM_THREADS": "4"}
    if isa != "default":
        env["AMD_LLAMA4_CPU_ISA"] = isa
    here = os.path.dirname(os.path.abspath(__file__))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (here, env.get("PYTHONPATH")) if p)
    subprocess.run([sys.executable, "-c", _SUBPROCESS], check=True, env=env)
