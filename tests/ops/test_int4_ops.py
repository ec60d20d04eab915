"""int4 w4a16 ops (amd_llama4/ops/int4.py): packing, round-to-nearest quantisation, the torch
references against dense math on the dequantised weights, the native CPU kernels (AVX-512, AVX2 and
portable paths) against the references on odd shapes, and input validation that names the tensor."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from amd_llama4.ops import int4 as I
from amd_llama4.ops import native
from amd_llama4.ops.moe import fused_moe
from native_helpers import TOL, require_native


@pytest.fixture
def _native():
    require_native()
    if not hasattr(native._C, "int4_linear"):
        pytest.fail("amd_llama4._C was built without the int4 kernels (rebuild the extension)")


def weights(N, K, dtype=torch.float32, seed=0, scale=None):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(N, K, generator=g) * (scale or K ** -0.5)).to(dtype)


# ---------------------------------------------------------------- packing and quantisation

def test_pack_unpack_roundtrip_and_nibble_order():
    q = torch.randint(0, 16, (3, 5, 64), dtype=torch.uint8)
    p = I.pack_int4(q)
    assert p.shape == (3, 5, 32) and p.dtype == torch.uint8
    assert torch.equal(I.unpack_int4(p), q)
    # column 2j in the LOW nibble, 2j + 1 in the HIGH nibble
    assert I.pack_int4(torch.tensor([[3, 10]], dtype=torch.uint8)).item() == 3 | (10 << 4)
    with pytest.raises(ValueError, match="even"):
        I.pack_int4(torch.zeros(2, 7, dtype=torch.uint8))


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("group_size", [32, 64, 128])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_quantize_dequantize_error_bound(symmetric, group_size, dtype):
    w = weights(24, 256, dtype, seed=group_size)
    q, s, z = I.quantize_int4(w, group_size, symmetric)
    assert q.shape == (24, 128) and s.shape == (24, 256 // group_size) and s.dtype == dtype
    assert (z is None) == symmetric
    d = I.dequantize_int4(q, s, z, group_size)
    # round to nearest: half a step (+ the scale's own rounding); with a zero point the rounded z
    # shifts the grid by up to half a step more at the ends of the range (clipping)
    step = s.float().repeat_interleave(group_size, dim=1)
    err = (d - w.float()).abs()
    assert (err <= step * (0.5 if symmetric else 1.0) * 1.02 + 1e-6).all()
    assert err.mean() <= step.mean() * 0.3  # mostly the uniform rounding error (mean step / 4)
    levels = I.unpack_int4(q)
    if symmetric:  # s = absmax / 7: the level -8 (nibble 0) stays unused
        assert levels.min() >= 1 and levels.max() <= 15
    else:  # the range [min, max] spans 15 steps: both ends are reached in every non-constant group
        per_group = levels.reshape(24, -1, group_size)
        assert (per_group.amax(-1) - per_group.amin(-1) >= 14).all()


def test_quantize_extremes_and_zero_groups():
    w = torch.zeros(2, 64)
    w[0, :32] = torch.linspace(-3, 3, 32)
    for sym in (True, False):
        q, s, z = I.quantize_int4(w, 32, sym)
        d = I.dequantize_int4(q, s, z, 32)
        assert torch.isfinite(d).all()
        if sym:  # the largest magnitude is exact
            torch.testing.assert_close(d[0, :32].abs().max(), torch.tensor(3.0))
        else:  # within one step (0.4) of both ends
            assert abs(d[0, 0] + 3) <= 0.4 and abs(d[0, 31] - 3) <= 0.4
        assert torch.equal(d[:, 32:], torch.zeros(2, 32)) and torch.equal(d[1], torch.zeros(64))
    # asymmetric: an all-positive group keeps 0 representable and uses the full range
    q, s, z = I.quantize_int4(torch.linspace(1, 2, 32)[None], 32, False)
    assert z.item() == 0 and I.unpack_int4(q).max().item() == 15


def test_quantize_batched_experts():
    w = torch.randn(3, 16, 64)
    q, s, z = I.quantize_int4(w, 32, False)
    assert q.shape == (3, 16, 32) and s.shape == z.shape == (3, 16, 2)
    for e in range(3):
        qe, se, ze = I.quantize_int4(w[e], 32, False)
        assert torch.equal(q[e], qe) and torch.equal(s[e], se) and torch.equal(z[e], ze)


# ---------------------------------------------------------------- references

@pytest.mark.parametrize("symmetric", [True, False])
def test_int4_linear_reference_is_dequantised_matmul(symmetric):
    w = weights(40, 128)
    q, s, z = I.quantize_int4(w, 64, symmetric)
    x = torch.randn(2, 3, 128)
    ref = x @ I.dequantize_int4(q, s, z, 64).t()
    out = I.int4_linear(x, q, s, z, 64, backend="torch")
    assert out.shape == (2, 3, 40)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def moe_weights(E, H, inter, G, symmetric, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    w13 = (torch.randn(E, 2 * inter, H, generator=g) * H ** -0.5).to(dtype)
    w2 = (torch.randn(E, H, inter, generator=g) * inter ** -0.5).to(dtype)
    return I.quantize_int4(w13, G, symmetric), I.quantize_int4(w2, G, symmetric)


def routing(T, E, k, seed=0, experts=None):
    g = torch.Generator().manual_seed(seed)
    pool = torch.tensor(experts) if experts is not None else torch.arange(E)
    ids = torch.stack([pool[torch.randperm(len(pool), generator=g)[:k]] for _ in range(T)]).to(torch.int32)
    return torch.rand(T, k, generator=g), ids


@pytest.mark.parametrize("k", [1, 2])
@pytest.mark.parametrize("symmetric", [True, False])
def test_fused_moe_int4_reference_matches_dense_moe_on_dequantised(k, symmetric):
    E, H, inter = 4, 64, 96
    w13, w2 = moe_weights(E, H, inter, 32, symmetric)
    x = torch.randn(9, H)
    tw, ids = routing(9, E, k, experts=[0, 2, 3])  # expert 1 gets no token
    out = I.fused_moe_int4(x, *w13, *w2, tw, ids, 32, backend="torch")
    d13 = I.dequantize_int4(*w13, 32).transpose(1, 2).contiguous()  # -> input-major [E, H, 2I]
    d2 = I.dequantize_int4(*w2, 32).transpose(1, 2).contiguous()  # [E, I, H]
    torch.testing.assert_close(out, fused_moe(x, d13, d2, tw, ids, backend="torch"), rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- native CPU kernels

@pytest.mark.usefixtures("_native")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("M", [1, 2, 3, 5, 8, 13, 40])
@pytest.mark.parametrize("group_size,symmetric", [(32, False), (64, True), (128, True), (128, False)])
def test_native_int4_linear(dtype, M, group_size, symmetric):
    N, K = 37, 384  # N not a multiple of the 4-row tile; M = 40 takes the dequantise + BLAS path
    q, s, z = I.quantize_int4(weights(N, K, dtype, seed=M), group_size, symmetric)
    x = torch.randn(M, K).to(dtype)
    out = I.int4_linear(x, q, s, z, group_size, backend="native")
    assert out.dtype == dtype and out.shape == (M, N)
    torch.testing.assert_close(out, I.int4_linear(x, q, s, z, group_size, backend="torch"), **TOL[dtype])


@pytest.mark.usefixtures("_native")
def test_native_int4_linear_scale_dtypes_and_views():
    N, K = 20, 256
    w = weights(N, K)
    q, s, z = I.quantize_int4(w, 128, False)
    x = torch.randn(6, 2 * K)[:, ::2]  # non-contiguous input
    ref = I.int4_linear(x, q, s, z, 128, backend="torch")
    for sd in (torch.float32, torch.bfloat16, torch.float16):
        s2 = s.to(sd)
        torch.testing.assert_close(I.int4_linear(x, q, s2, z, 128, backend="native"),
                                   I.int4_linear(x, q, s2, z, 128, backend="torch"), **TOL[torch.float32])
    torch.testing.assert_close(I.int4_linear(x[None], q, s, z, 128)[0], ref, **TOL[torch.float32])  # dispatch: native
    # scales given transposed (a GPTQ reader's view) are made contiguous by the launcher
    st = s.t().contiguous().t()
    torch.testing.assert_close(I.int4_linear(x, q, st, z, 128, backend="native"), ref, **TOL[torch.float32])


@pytest.mark.usefixtures("_native")
@pytest.mark.parametrize("symmetric", [True, False])
def test_native_dequantize_and_chunked_blas_path(monkeypatch, symmetric):
    N, K, G = 45, 256, 64
    q, s, z = I.quantize_int4(weights(N, K, torch.bfloat16), G, symmetric)
    ref = I.dequantize_int4(q, s, z, G)
    for dt in (torch.float32, torch.bfloat16):
        out = torch.empty(N, K, dtype=dt)
        native._C.dequantize_int4(native._ref(q, "qweight"), native._ref(s, "scales"),
                                  None if z is None else native._ref(z, "zeros"), G, native._ref(out, "out"))
        assert torch.equal(out, ref.to(dt))  # the same fp32 values, bf16 rounded to nearest even
    monkeypatch.setattr(native, "INT4_DEQUANT_CHUNK_BYTES", 8 * K * 2)  # 8-row chunks: 6 BLAS calls
    for dt in (torch.float32, torch.bfloat16):
        x = torch.randn(native.INT4_GEMV_MAX_ROWS + 3, K).to(dt)
        torch.testing.assert_close(I.int4_linear(x, q, s.to(dt), z, G, backend="native"),
                                   I.int4_linear(x, q, s.to(dt), z, G, backend="torch"), **TOL[dt])


@pytest.mark.usefixtures("_native")
def test_native_launcher_checks_name_the_tensor():
    """The C++ launchers check again (bindings called directly, past the Python checks)."""
    q, s, z = I.quantize_int4(weights(8, 64), 32, False)
    x, out = torch.randn(2, 64), torch.empty(2, 8)
    r = native._ref
    with pytest.raises(ValueError, match="int4_linear: scales has shape"):
        native._C.int4_linear(r(x, "x"), r(q, "qweight"), r(s[:, :1].contiguous(), "scales"), None, 32, r(out, "out"))
    with pytest.raises(ValueError, match="qweight must be uint8"):
        native._C.int4_linear(r(x, "x"), r(q.to(torch.int32), "qweight"), r(s, "scales"), None, 32, r(out, "out"))
    with pytest.raises(ValueError, match="zeros must be contiguous"):
        zt = torch.empty(2, 8, dtype=torch.uint8).t()
        native._C.int4_linear(r(x, "x"), r(q, "qweight"), r(s, "scales"), r(zt, "zeros"), 32, r(out, "out"))
    with pytest.raises(ValueError, match="group_size 16"):
        native._C.int4_linear(r(x, "x"), r(q, "qweight"), r(s, "scales"), None, 16, r(out, "out"))


@pytest.mark.usefixtures("_native")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("k", [1, 2])
@pytest.mark.parametrize("T", [1, 7, 33])
@pytest.mark.parametrize("symmetric", [True, False])
def test_native_fused_moe_int4(dtype, k, T, symmetric):
    E, H, inter, G = 6, 128, 64, 32
    w13, w2 = moe_weights(E, H, inter, G, symmetric, dtype, seed=T)
    x = torch.randn(T, H).to(dtype)
    tw, ids = routing(T, E, k, seed=T, experts=[0, 1, 3, 5])  # experts 2 and 4 empty
    out = I.fused_moe_int4(x, *w13, *w2, tw, ids, G, backend="native")
    assert out.dtype == dtype and out.shape == (T, H)
    ref = I.fused_moe_int4(x, *w13, *w2, tw, ids, G, backend="torch")
    torch.testing.assert_close(out, ref, **TOL[dtype])


@pytest.mark.usefixtures("_native")
def test_native_fused_moe_int4_int64_ids_and_empty_batch():
    w13, w2 = moe_weights(3, 64, 32, 32, True)
    x = torch.randn(4, 64)
    tw, ids = routing(4, 3, 2)
    ref = I.fused_moe_int4(x, *w13, *w2, tw, ids, 32, backend="torch")
    torch.testing.assert_close(I.fused_moe_int4(x, *w13, *w2, tw, ids.long(), 32, backend="native"), ref,
                               **TOL[torch.float32])
    empty = I.fused_moe_int4(x[:0], *w13, *w2, tw[:0], ids[:0], 32, backend="native")
    assert empty.shape == (0, 64)


@pytest.mark.usefixtures("_native")
@pytest.mark.parametrize("isa", ["avx2", "base"])
def test_native_int4_lower_isa_paths(isa):
    """AMD_LLAMA4_CPU_ISA is read once per process: each forced path runs in a child."""
    code = textwrap.dedent("""
        import torch
        from amd_llama4.ops import int4 as I, native
        print(native._C.int4_isa())
        for dt in (torch.float32, torch.bfloat16):
            for M in (1, 3, 6):
                for sym in (True, False):
                    q, s, z = I.quantize_int4((torch.randn(13, 256) / 16).to(dt), 32, sym)
                    x = torch.randn(M, 256).to(dt)
                    o = I.int4_linear(x, q, s, z, 32, backend="native").float()
                    r = I.int4_linear(x, q, s, z, 32, backend="torch").float()
                    torch.testing.assert_close(o, r, rtol=2e-2, atol=2e-2)
        w13 = I.quantize_int4(torch.randn(3, 64, 64) / 8, 32, False)
        w2 = I.quantize_int4(torch.randn(3, 64, 32) / 8, 32, False)
        x, tw, ids = torch.randn(5, 64), torch.rand(5, 2), torch.tensor([[0, 2]] * 5, dtype=torch.int32)
        torch.testing.assert_close(I.fused_moe_int4(x, *w13, *w2, tw, ids, 32, backend="native"),
                                   I.fused_moe_int4(x, *w13, *w2, tw, ids, 32, backend="torch"), rtol=1e-4, atol=1e-4)
        print("ok")
    """)
    env = {**os.environ, "AMD_LLAMA4_CPU_ISA": isa, "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.split() == [{"avx2": "avx2", "base": "portable"}[isa], "ok"] or \
        (isa == "avx2" and res.stdout.split() == ["portable", "ok"])  # a CPU without AVX2 falls back


def _exact_linear(x, q, s, z, G):
    """float64 x @ dequant(W)^T and sum |x| |W| (the scale of an fp32 reordering error)."""
    w = I.dequantize_int4(q, s, z, G).double()
    return x.double() @ w.t(), x.double().abs() @ w.abs().t()


@pytest.mark.usefixtures("_native")
@pytest.mark.parametrize("K,G", [(96, 32), (416, 32), (448, 64), (640, 128), (1024, 32)])
@pytest.mark.parametrize("symmetric", [True, False])
def test_native_int4_linear_exact_products_odd_widths(K, G, symmetric):
    """w4a16: neither the weights nor the activations are rounded, so the fp32 result is the exact
    dot product up to fp32 summation error (rounding x to bf16 would be ~1e-3 off). K = 32 * odd and
    K % 128 != 0 take the AVX-512 body's masked tail block; M = 1..9 every row-chunk size."""
    N = 29
    for sd in (torch.bfloat16, torch.float16, torch.float32):
        q, s, z = I.quantize_int4(weights(N, K, seed=K + G), G, symmetric)
        s = s.to(sd)
        for M in (1, 3, 9):
            x = torch.randn(M, K, generator=torch.Generator().manual_seed(M)) * 3
            out = I.int4_linear(x, q, s, z, G, backend="native")
            exact, mag = _exact_linear(x, q, s, z, G)
            err = (out.double() - exact).abs() / mag
            assert err.max() < 2e-6, f"K={K} G={G} scales {sd} M={M}: relative error {err.max():.2e}"
            xb = x.bfloat16()  # bf16 activations: exact products, one rounding of the fp32 sum to bf16
            ob = I.int4_linear(xb, q, s, z, G, backend="native")
            eb, mb = _exact_linear(xb, q, s, z, G)
            torch.testing.assert_close(ob.double(), eb.bfloat16().double(), rtol=8e-3, atol=1e-6 * mb.max().item())


@pytest.mark.usefixtures("_native")
def test_native_int4_linear_zero_points_at_the_ends():
    """Zero points 0 and 15 (the kernels may dot q - 8 and correct by (z - 8) * sum(x)): still exact
    up to fp32 summation, with activations whose mean is far from 0 (the correction is large)."""
    N, K, G = 21, 256, 32
    g = torch.Generator().manual_seed(3)
    q = torch.randint(0, 256, (N, K // 2), dtype=torch.uint8, generator=g)
    s = (torch.rand(N, K // G, generator=g) * 0.1 + 0.01).bfloat16()
    z = torch.where(torch.rand(N, K // G, generator=g) < 0.5, 0, 15).to(torch.uint8)
    for dt in (torch.float32, torch.bfloat16):
        x = (torch.randn(4, K, generator=g) + 5).to(dt)
        out = I.int4_linear(x, q, s, z, G, backend="native")
        exact, mag = _exact_linear(x, q, s, z, G)
        tol = 2e-6 if dt == torch.float32 else 8e-3
        assert ((out.double() - exact).abs() / mag).max() < tol


@pytest.mark.usefixtures("_native")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("T", [1, 5, 9])
def test_native_fused_moe_int4_tail_blocks(dtype, T):
    """H and I not multiples of 128 (masked tail blocks in both GEMMs), bf16 scales, top-1 and top-2."""
    E, H, inter, G = 5, 160, 96, 32
    for k, sym in ((1, True), (2, False)):
        w13, w2 = moe_weights(E, H, inter, G, sym, torch.bfloat16, seed=T + k)
        x = torch.randn(T, H).to(dtype)
        tw, ids = routing(T, E, k, seed=T)
        torch.testing.assert_close(I.fused_moe_int4(x, *w13, *w2, tw, ids, G, backend="native"),
                                   I.fused_moe_int4(x, *w13, *w2, tw, ids, G, backend="torch"), **TOL[dtype])


@pytest.mark.usefixtures("_native")
def test_native_int4_isa_names_a_body():
    assert native._C.int4_isa() in ("avx512bf16", "avx512", "avx2", "portable")


# ---------------------------------------------------------------- bad inputs

def _linear_args():
    q, s, z = I.quantize_int4(weights(8, 64), 32, False)
    return torch.randn(2, 64), q, s, z


@pytest.mark.parametrize("backend", ["torch", "native"])
def test_int4_linear_bad_inputs_name_the_tensor(backend):
    if backend == "native":
        require_native()
    x, q, s, z = _linear_args()
    cases = [
        ((x, q.to(torch.int32), s, z, 32), "qweight must be uint8"),
        ((x, q, s[:, :1], z, 32), "scales must be"),
        ((x, q, s.to(torch.int32), z, 32), "scales must be one of"),
        ((x, q, s, z.to(torch.int32), 32), "zeros must be uint8"),
        ((x, q, s, z[:4], 32), "zeros must be"),
        ((torch.randn(2, 60), q, s, z, 32), "x must be"),
        ((x, q, s, z, 48), "group_size 48"),
        ((x, q[:, :24], s[:, :1], z[:, :1], 32), "not a multiple of group_size"),
    ]
    for args, msg in cases:
        with pytest.raises(ValueError, match=msg):
            I.int4_linear(*args, backend=backend)


@pytest.mark.parametrize("backend", ["torch", "native"])
def test_fused_moe_int4_bad_inputs_name_the_tensor(backend):
    if backend == "native":
        require_native()
    (q13, s13, z13), (q2, s2, z2) = moe_weights(3, 64, 32, 32, False)
    x = torch.randn(4, 64)
    tw, ids = routing(4, 3, 1)
    good = [x, q13, s13, z13, q2, s2, z2, tw, ids, 32]
    cases = [  # ({argument index: bad value}, expected message)
        ({1: q13[:, :, :16]}, r"w13_s must be \[3, 64, 1\] for w13_q"),
        ({2: s13.to(torch.int64)}, "w13_s must be one of"),
        ({5: s2[:, :, :0]}, "w2_s must be"),
        ({6: None}, "w13_z and w2_z"),
        ({4: q2[:2], 5: s2[:2], 6: z2[:2]}, r"w2_q must be \[E=3"),
        ({3: z13.to(torch.int32)}, "w13_z must be uint8"),
        ({7: tw[:, :0]}, "topk_weights"),
        ({8: ids.float()}, "topk_ids must be int32 or int64"),
        ({0: torch.randn(4, 32)}, "w13_q must be"),
    ]
    for repl, msg in cases:
        args = [repl.get(i, a) for i, a in enumerate(good)]
        with pytest.raises(ValueError, match=msg):
            I.fused_moe_int4(*args, backend=backend)
    if backend == "native":  # an expert id outside [0, E) is caught by the kernel's own check
        with pytest.raises(ValueError, match="topk_ids holds expert 7"):
            I.fused_moe_int4(x, q13, s13, z13, q2, s2, z2, tw, torch.full_like(ids, 7), 32, backend="native")
