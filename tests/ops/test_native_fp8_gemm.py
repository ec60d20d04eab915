"""Native CPU fp8_gemm (w8a8) against the torch reference (amd_llama4/ops/fp8_gemm.py): both fp8
formats, per-token / per-channel / per-tensor / block scales (ragged blocks too), fp32 and bf16 out,
every finite fp8 value incl. the saturation values, NaN encodings, the lower-ISA bodies, dispatch and
bad inputs. The products of two fp8 values are exact in fp32, so the native sums differ from the
reference only by fp32 rounding: tolerances are fp32's, relative to the reference's magnitude."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from amd_llama4.ops import dispatch, native
from amd_llama4.ops.fp8 import FP8_MAX, quantize_fp8
from native_helpers import require_native

FMTS = {"e4m3fn": torch.float8_e4m3fn, "e4m3fnuz": torch.float8_e4m3fnuz}


@pytest.fixture(autouse=True)
def _native():
    require_native()
    if not hasattr(native._C, "fp8_gemm"):
        pytest.fail("amd_llama4._C lacks fp8_gemm: rebuild the extension (setup.py build_ext --inplace)")


def ref(*args, **kwargs):
    # ops/__init__ re-exports the function under the module's name: reach the module itself
    return sys.modules["amd_llama4.ops.fp8_gemm"].fp8_gemm(*args, backend="torch", **kwargs)


def fp8_abs(q: torch.Tensor) -> torch.Tensor:
    return (q.view(torch.uint8) & 0x7F).view(q.dtype)


def close(got: torch.Tensor, args: tuple, block=None) -> None:
    """Against the reference on `args`: per element, fp32 summation-order error relative to the sum
    of the products' magnitudes (|a| @ |b|^T), plus one bf16 rounding when out is bf16."""
    want = ref(*args, block, out_dtype=got.dtype)
    aq, a_s, bq, b_s = args
    mag = ref(fp8_abs(aq), a_s.abs(), fp8_abs(bq), b_s.abs(), block, out_dtype=torch.float32)
    assert got.shape == want.shape
    g, w = got.float(), want.float()
    assert torch.equal(g.isnan(), w.isnan()), "NaN positions differ"
    ok = g.isnan() | ((g - w).abs() <= 4e-6 * mag + (2 ** -7 if got.dtype == torch.bfloat16 else 0) * w.abs())
    assert ok.all(), f"{(~ok).sum().item()} of {ok.numel()} differ; worst |diff| {(g - w).abs()[~ok].max().item()}"


def operands(M, N, K, fmt, kind, g, block=(128, 128)):
    a, b = torch.randn(M, K, generator=g) * 3, torch.randn(N, K, generator=g) * K ** -0.5
    if kind == "block":
        return (*quantize_fp8(a, fmt, "block", (1, block[1])), *quantize_fp8(b, fmt, "block", block)), block
    aq, a_s = quantize_fp8(a, fmt, "row")
    bq, b_s = quantize_fp8(b, fmt, "row")
    if kind == "tensor":
        a_s = torch.rand(1, 1, generator=g) + 0.5
        b_s = torch.rand(1, 1, generator=g) * 1e-2
    return (aq, a_s, bq, b_s), None


@pytest.mark.parametrize("fmt", FMTS)
@pytest.mark.parametrize("M", [1, 3, 7, 16])
@pytest.mark.parametrize("kind", ["channel", "tensor", "block"])
def test_fp8_gemm_matches_reference(fmt, M, kind):
    g = torch.Generator().manual_seed(M)
    for N in (1, 129, 256):
        for K in (128, 384, 1024):
            args, block = operands(M, N, K, fmt, kind, g)
            for out_dtype in (torch.float32, torch.bfloat16):
                close(native.fp8_gemm(*args, block, out_dtype), args, block)


@pytest.mark.parametrize("block,K,N", [((64, 48), 100, 129), ((1, 32), 70, 5), ((128, 128), 200, 300),
                                       ((3, 17), 33, 7)])
def test_fp8_gemm_ragged_blocks(block, K, N):
    """Blocks that do not divide K or N, and k-blocks that end inside a 32-column step."""
    g = torch.Generator().manual_seed(K)
    for fmt in FMTS:
        for M in (1, 5):
            args, _ = operands(M, N, K, fmt, "block", g, block)
            close(native.fp8_gemm(*args, block, torch.float32), args, block)


@pytest.mark.parametrize("fmt", FMTS)
def test_fp8_gemm_every_value_and_saturation(fmt):
    """Every finite fp8 value (subnormals, +-0, the saturation values +-448 / +-240) on both sides; the
    row of +-max times the row of +-max is the largest product there is."""
    dt = FMTS[fmt]
    bits = torch.arange(256, dtype=torch.uint8)
    bits = bits[bits.view(dt).float().isfinite()]  # fp8 ops are few on CPU: shuffle the bytes, then view
    K = bits.numel()
    fmax = FP8_MAX[fmt]
    top = torch.full((K,), fmax).to(dt).view(torch.uint8)
    a = torch.stack([bits, bits.flip(0), top, top | 0x80]).view(dt)
    b = torch.stack([bits, bits.roll(37), bits.flip(0), top, top | 0x80]).view(dt)
    assert (a.float().abs().amax() == fmax) and (b.float().abs().amax() == fmax) and b.float()[4, 0] == -fmax
    a_s, b_s = torch.tensor([[1.0], [0.5], [2.0], [1.0]]), torch.tensor([[1.0], [0.25], [3.0], [1.0], [1.0]])
    for out_dtype in (torch.float32, torch.bfloat16):
        got = native.fp8_gemm(a, a_s, b, b_s, None, out_dtype)
        assert torch.isfinite(got).all()
        close(got, (a, a_s, b, b_s))
    # saturated rows: an exact sum (K identical exact products)
    assert native.fp8_gemm(a[2:3], a_s[:1], b[3:4], b_s[:1], None, torch.float32).item() == fmax * fmax * K


def test_fp8_gemm_nan_encodings_and_mixed_formats():
    """A NaN byte (fn 0x7f / 0xff, fnuz 0x80) in a weight row gives NaN in that output column only, as the
    reference does; a_q and b_q may be in different formats."""
    g = torch.Generator().manual_seed(1)
    for fmt, nan_byte in (("e4m3fn", 0x7F), ("e4m3fn", 0xFF), ("e4m3fnuz", 0x80)):
        (aq, a_s, bq, b_s), _ = operands(2, 40, 96, fmt, "channel", g)
        bits = bq.view(torch.uint8).clone()
        bits[7, 50] = nan_byte
        bq = bits.view(FMTS[fmt])
        got = native.fp8_gemm(aq, a_s, bq, b_s, None, torch.float32)
        want = ref(aq, a_s, bq, b_s, None, out_dtype=torch.float32)
        assert torch.equal(got.isnan(), want.isnan()) and got[:, 7].isnan().all() and got.isnan().sum() == 2
        close(got, (aq, a_s, bq, b_s))
    (aq, a_s, _, _), _ = operands(3, 8, 160, "e4m3fn", "channel", g)
    (_, _, bq, b_s), _ = operands(3, 8, 160, "e4m3fnuz", "channel", g)
    close(native.fp8_gemm(aq, a_s, bq, b_s, None, torch.float32), (aq, a_s, bq, b_s))


def test_fp8_gemm_non_contiguous_and_scale_dtypes():
    g = torch.Generator().manual_seed(2)
    (aq, a_s, bq, b_s), _ = operands(4, 64, 256, "e4m3fn", "channel", g)
    wide = torch.zeros(4, 512, dtype=torch.uint8).view(torch.float8_e4m3fn)
    wide[:, ::2] = aq
    a_strided = wide[:, ::2]
    assert not a_strided.is_contiguous()
    close(native.fp8_gemm(a_strided, a_s, bq, b_s, None, torch.float32), (aq, a_s, bq, b_s))
    close(native.fp8_gemm(aq, a_s.double(), bq, b_s.t().contiguous().t(), None, torch.float32), (aq, a_s, bq, b_s))


def test_fp8_gemm_dispatch():
    """CPU inputs of at most FP8_GEMM_MAX_ROWS rows take the native kernel; more rows go to torch."""
    g = torch.Generator().manual_seed(3)
    (aq, a_s, bq, b_s), _ = operands(native.FP8_GEMM_MAX_ROWS + 1, 16, 64, "e4m3fn", "channel", g)
    small = (aq[:native.FP8_GEMM_MAX_ROWS], a_s[:native.FP8_GEMM_MAX_ROWS], bq, b_s)
    assert dispatch.resolve("fp8_gemm", small, {"out_dtype": torch.float32}) is native.fp8_gemm
    assert dispatch.resolve("fp8_gemm", (aq, a_s, bq, b_s), {}).__module__ == "amd_llama4.ops.fp8_gemm"
    bad_out = dispatch.resolve("fp8_gemm", small, {"out_dtype": torch.float16})
    assert bad_out.__module__ == "amd_llama4.ops.fp8_gemm"  # fp16 out: the reference
    from amd_llama4 import ops

    close(ops.fp8_gemm(*small, out_dtype=torch.float32), small)


def test_fp8_gemm_bad_inputs_name_the_tensor():
    g = torch.Generator().manual_seed(4)
    (aq, a_s, bq, b_s), _ = operands(2, 8, 64, "e4m3fn", "channel", g)
    with pytest.raises(ValueError, match="a_scale"):
        native.fp8_gemm(aq, torch.ones(3, 1), bq, b_s)
    with pytest.raises(ValueError, match="b_scale"):
        native.fp8_gemm(aq, a_s, bq, torch.ones(8, 2))
    with pytest.raises(ValueError, match="b_q"):
        native.fp8_gemm(aq, a_s, bq[:, :32], b_s)
    # the C++ launcher's own guard (what the decode step would hit)
    R = native._ref
    out = torch.empty(2, 8)
    with pytest.raises(ValueError, match="b_q must be \\[N, K=64\\]"):
        native._C.fp8_gemm(R(aq, "a_q"), R(a_s, "a_scale"), R(bq[:, :32].contiguous(), "b_q"), R(b_s, "b_scale"),
                           0, 0, R(out, "out"))
    with pytest.raises(ValueError, match="a_q has unsupported dtype|a_q.*float8"):
        native._C.fp8_gemm(R(aq.float(), "a_q"), R(a_s, "a_scale"), R(bq, "b_q"), R(b_s, "b_scale"), 0, 0,
                           R(out, "out"))
    with pytest.raises(ValueError, match="b_scale must be \\[1, 2\\]"):  # block (8, 32): [ceil(8/8), ceil(64/32)]
        native._C.fp8_gemm(R(aq, "a_q"), R(torch.ones(2, 2), "a_scale"), R(bq, "b_q"), R(torch.ones(1, 1), "b_scale"),
                           8, 32, R(out, "out"))
    with pytest.raises(ValueError, match="block"):
        native._C.fp8_gemm(R(aq, "a_q"), R(a_s, "a_scale"), R(bq, "b_q"), R(b_s, "b_scale"), 8, 0, R(out, "out"))
    with pytest.raises(ValueError, match="out"):
        native._C.fp8_gemm(R(aq, "a_q"), R(a_s, "a_scale"), R(bq, "b_q"), R(b_s, "b_scale"), 0, 0,
                           R(torch.empty(2, 8, dtype=torch.float16), "out"))
    with pytest.raises(ValueError, match="a_scale must be contiguous"):
        native._C.fp8_gemm(R(aq, "a_q"), R(torch.ones(1, 2)[:, :1].expand(2, 1), "a_scale"), R(bq, "b_q"),
                           R(b_s, "b_scale"), 0, 0, R(out, "out"))


@pytest.mark.parametrize("isa", ["avx2", "base"])
def test_fp8_gemm_other_isas(isa):
    """The AVX2 (F16C) and portable bodies, forced in a subprocess, give the same results (NaN included)."""
    code = f"""
import sys, torch
from amd_llama4.ops import native as N
from amd_llama4.ops.fp8 import quantize_fp8
ref = sys.modules["amd_llama4.ops.fp8_gemm"].fp8_gemm
ab = lambda q: (q.view(torch.uint8) & 0x7F).view(q.dtype)
isa = N._C.fp8_gemm_isa()
assert isa in ({isa!r}, "portable"), isa
gen = torch.Generator().manual_seed(0)
for fmt in ("e4m3fn", "e4m3fnuz"):
    for M, K, n, block in [(1, 128, 129, None), (3, 384, 17, None), (16, 100, 33, None), (2, 384, 129, (128, 128)),
                           (5, 70, 9, (3, 17))]:
        a, b = torch.randn(M, K, generator=gen), torch.randn(n, K, generator=gen)
        ag, wg = ("block", (1, block[1])) if block else ("row", None), ("block", block) if block else ("row", None)
        aq, a_s = quantize_fp8(a, fmt, *ag)
        bq, b_s = quantize_fp8(b, fmt, *wg)
        bits = bq.view(torch.uint8).clone()
        bits[0, K // 2] = 0x80 if fmt == "e4m3fnuz" else 0x7F
        bq = bits.view(bq.dtype)
        for od in (torch.float32, torch.bfloat16):
            got, want = N.fp8_gemm(aq, a_s, bq, b_s, block, od), ref(aq, a_s, bq, b_s, block, od, backend="torch")
            mag = ref(ab(aq), a_s, ab(bq), b_s, block, torch.float32, backend="torch").nan_to_num()
            g, w = got.float(), want.float()
            tol = 4e-6 * mag + (2 ** -7 if od == torch.bfloat16 else 0) * w.abs()
            assert torch.equal(g.isnan(), w.isnan()) and g[:, 0].isnan().all() and g[:, 1:].isfinite().all()
            assert ((g - w).abs()[:, 1:] <= tol[:, 1:]).all(), (fmt, M, K, n, block, od, (g - w).abs().max())
print("ok", isa)
"""
    env = {**os.environ, "AMD_LLAMA4_CPU_ISA": isa}
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
