"""Native FP8 quantisation: bit-exact against the torch reference (torch's float8 casts) for both
formats, every granularity, saturation, signed zero, ties, subnormals, and the fn->fnuz conversion."""
from __future__ import annotations

import pytest
import torch

from amd_llama4 import ops
from amd_llama4.ops import native
from amd_llama4.ops.fp8 import FP8_MAX
from native_helpers import require_native

pytestmark = pytest.mark.usefixtures("_native")

FMTS = {"e4m3fn": torch.float8_e4m3fn, "e4m3fnuz": torch.float8_e4m3fnuz}


@pytest.fixture
def _native():
    require_native()


def bits(q: torch.Tensor) -> torch.Tensor:
    return q.view(torch.uint8)


def hard_values(fmt: str) -> torch.Tensor:
    """Every finite fp8 value, the midpoints between neighbours (round-half-even ties) and their
    neighbours one fp32 ulp away, both signs, zeros, values past the max, inf, denormal fp32."""
    vals = torch.arange(256, dtype=torch.uint8).view(FMTS[fmt]).float()
    vals = vals[vals.isfinite()].unique()
    mids = (vals[1:] + vals[:-1]) / 2
    near = torch.cat([torch.nextafter(mids, torch.full_like(mids, d)) for d in (float("inf"), float("-inf"))])
    fmax = FP8_MAX[fmt]
    extra = torch.tensor([0.0, -0.0, fmax * 1.03, fmax * 1.0625, 1e30, float("inf"), 1e-45, -1e-45, 1e-40])
    v = torch.cat([vals, mids, near, extra])
    return torch.cat([v, -v])


@pytest.mark.parametrize("fmt", FMTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cast_is_bit_exact(fmt, dtype):
    x = hard_values(fmt).to(dtype)[None]  # [1, N]
    one = torch.ones(1, 1)
    q, _ = native.quantize_fp8(x, fmt, "tensor", scale=one)
    rq, _ = ops.quantize_fp8(x, fmt, "tensor", scale=one, backend="torch")
    torch.testing.assert_close(bits(q), bits(rq), rtol=0, atol=0)
    assert not q.float().isnan().any() and not q.float().isinf().any()  # saturating


@pytest.mark.parametrize("fmt", FMTS)
def test_signed_zero(fmt):
    x = torch.tensor([[0.0, -0.0, -1e-30, 1e-30]])
    q, _ = native.quantize_fp8(x, fmt, "tensor", scale=torch.ones(1, 1))
    want = [0x00, 0x80, 0x80, 0x00] if fmt == "e4m3fn" else [0, 0, 0, 0]  # fnuz has no -0
    assert bits(q)[0].tolist() == want


@pytest.mark.parametrize("fmt", FMTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("granularity,block,shape", [
    ("tensor", None, (7, 129)), ("row", None, (129, 100)), ("col", None, (3, 7, 200)),
    ("block", (1, 128), (129, 300)), ("block", (128, 128), (2, 129, 257)), ("row", None, (1, 1))])
def test_quantize_granularities(fmt, dtype, granularity, block, shape):
    g = torch.Generator().manual_seed(1)
    x = (torch.randn(*shape, generator=g) * torch.logspace(-6, 4, shape[-1])).to(dtype)
    q, s = native.quantize_fp8(x, fmt, granularity, block)
    rq, rs = ops.quantize_fp8(x, fmt, granularity, block, backend="torch")
    assert q.dtype == FMTS[fmt] and q.shape == x.shape
    torch.testing.assert_close(s, rs, rtol=0, atol=0)
    torch.testing.assert_close(bits(q), bits(rq), rtol=0, atol=0)
    # static scales, given
    q2, s2 = native.quantize_fp8(x, fmt, granularity, block, scale=rs * 0.5)
    rq2, _ = ops.quantize_fp8(x, fmt, granularity, block, scale=rs * 0.5, backend="torch")
    torch.testing.assert_close(bits(q2), bits(rq2), rtol=0, atol=0)
    # dequantisation matches the reference's q.float() * scale
    for out_dtype in (torch.float32, torch.bfloat16):
        torch.testing.assert_close(native.dequantize_fp8(q, s, block, out_dtype),
                                   ops.dequantize_fp8(q, s, block, out_dtype), rtol=0, atol=0)


def test_quantize_non_contiguous_and_dispatch():
    x = torch.randn(300, 7).t()
    torch.testing.assert_close(bits(native.quantize_fp8(x, "e4m3fn")[0]),
                               bits(ops.quantize_fp8(x, "e4m3fn", backend="torch")[0]), rtol=0, atol=0)
    q, _ = ops.quantize_fp8(x, "e4m3fnuz", "tensor", scale=torch.tensor(0.5))  # 0-dim scale: dispatched
    torch.testing.assert_close(bits(q), bits(ops.quantize_fp8(x, "e4m3fnuz", "tensor", scale=torch.tensor(0.5),
                                                              backend="torch")[0]), rtol=0, atol=0)


def test_fn_to_fnuz_bit_exact():
    q = torch.arange(256, dtype=torch.uint8).view(torch.float8_e4m3fn).reshape(16, 16)
    s = torch.rand(16, 1)
    nq, ns = native.fn_to_fnuz(q, s)
    rq, rs = ops.fn_to_fnuz(q, s)
    torch.testing.assert_close(bits(nq), bits(rq), rtol=0, atol=0)
    torch.testing.assert_close(ns, rs, rtol=0, atol=0)
    finite = q.float().isfinite()  # dequantised values are identical (fn NaN 0x7f/0xff excluded)
    torch.testing.assert_close((nq.float() * ns)[finite], (q.float() * s)[finite], rtol=0, atol=0)


@pytest.mark.parametrize("fmt", FMTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("T,H,E,inter,k", [(1, 64, 3, 32, 1), (7, 200, 16, 72, 2), (129, 100, 5, 136, 1)])
def test_fused_moe_fp8(fmt, dtype, T, H, E, inter, k):
    moe_fp8 = pytest.importorskip("amd_llama4.ops.moe_fp8")
    g = torch.Generator().manual_seed(3)
    x = torch.randn(T, H, generator=g).to(dtype)
    w1 = torch.randn(E, H, 2 * inter, generator=g) / H**0.5
    w2 = torch.randn(E, inter, H, generator=g) / inter**0.5
    logits = torch.randn(T, E, generator=g)
    logits[:, -1] -= 100  # an expert without tokens
    tw, ids = ops.moe_topk_sigmoid(logits, k, backend="torch")
    q1, s1 = moe_fp8.quantize_moe_weights(w1, fmt)
    q2, s2 = moe_fp8.quantize_moe_weights(w2, fmt)
    got = native.fused_moe_fp8(x, q1, s1, q2, s2, tw, ids, fmt)
    want = moe_fp8.fused_moe_fp8(x, q1, s1, q2, s2, tw, ids, fmt, backend="torch")
    # Re-quantising h can move a value one fp8 step when accumulation order differs: compare with a
    # tolerance that admits that for a few elements and nothing systematic.
    tol = dict(rtol=3e-2, atol=3e-2) if dtype == torch.bfloat16 else dict(rtol=1e-3, atol=1e-3)
    close = torch.isclose(got.float(), want.float(), **tol)
    assert close.float().mean() > 0.995, f"{(~close).sum()} of {close.numel()} differ"
    torch.testing.assert_close(got.float(), want.float(), rtol=0.2, atol=0.05)
    # and the dispatch picks the native kernel on CPU
    from amd_llama4.ops import dispatch
    assert dispatch.resolve("fused_moe_fp8", (x, q1, s1, q2, s2, tw, ids, fmt), {}) is native.fused_moe_fp8
