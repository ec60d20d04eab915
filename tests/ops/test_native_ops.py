"""Native CPU ops (amd_llama4._C) against the torch references: odd shapes, empty experts,
non-contiguous inputs, fp32 and bf16."""
from __future__ import annotations

import pytest
import torch

from amd_llama4 import ops
from amd_llama4.ops import dispatch, native
from amd_llama4.ops.moe import moe_dense_reference
from native_helpers import TOL, moe_inputs, require_native

pytestmark = pytest.mark.usefixtures("_native")


@pytest.fixture
def _native():
    require_native()


DTYPES = [torch.float32, torch.bfloat16]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 2), (7, 130), (3, 5, 258)])
def test_silu_and_mul(dtype, shape):
    x = torch.randn(*shape, dtype=dtype) * 4
    torch.testing.assert_close(native.silu_and_mul(x), ops.silu_and_mul(x, backend="torch"))


def test_silu_and_mul_non_contiguous():
    x = torch.randn(130, 7).t()  # [7, 130], strided
    torch.testing.assert_close(native.silu_and_mul(x), ops.silu_and_mul(x, backend="torch"))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("T,H", [(1, 8), (7, 200), (129, 1000)])
@pytest.mark.parametrize("with_weight", [True, False])
@pytest.mark.parametrize("with_residual", [True, False])
def test_rms_norm(dtype, T, H, with_weight, with_residual):
    x = torch.randn(T, H, dtype=dtype) * 3
    w = torch.randn(H, dtype=dtype) if with_weight else None
    r = torch.randn(T, H, dtype=dtype) if with_residual else None
    got = native.rms_norm(x, w, 1e-5, r)
    want = ops.rms_norm(x, w, 1e-5, r, backend="torch")
    if with_residual:
        torch.testing.assert_close(got[1], want[1], rtol=0, atol=0)  # x + residual: same rounding
        got, want = got[0], want[0]
    torch.testing.assert_close(got, want, **TOL[dtype])


def test_rms_norm_non_contiguous_and_batched():
    x = torch.randn(200, 2, 7).permute(1, 2, 0)  # [2, 7, 200], strided
    torch.testing.assert_close(native.rms_norm(x, None, 1e-6), ops.rms_norm(x, None, 1e-6, backend="torch"),
                               **TOL[torch.float32])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("T,E,k", [(1, 3, 1), (7, 16, 2), (129, 128, 1), (129, 5, 2)])
def test_moe_topk_sigmoid(dtype, T, E, k):
    logits = torch.randn(T, E, dtype=dtype)
    w, ids = native.moe_topk_sigmoid(logits, k)
    rw, rids = ops.moe_topk_sigmoid(logits, k, backend="torch")
    assert ids.dtype == torch.int32 and w.dtype == torch.float32
    torch.testing.assert_close(w, rw, rtol=1e-6, atol=1e-6)
    # bf16 logits tie often; a tie may pick either expert, but the chosen logits must be the top ones.
    torch.testing.assert_close(logits.gather(1, ids.long()), logits.gather(1, rids.long()), rtol=0, atol=0)
    assert (ids.sort(1).values.diff(dim=1) != 0).all()  # distinct experts per token


@pytest.mark.parametrize("T,k,E,block", [(1, 1, 3, 16), (7, 2, 16, 4), (129, 1, 128, 64), (129, 2, 5, 1)])
@pytest.mark.parametrize("id_dtype", [torch.int32, torch.int64])
def test_moe_align_block_size(T, k, E, block, id_dtype):
    ids = torch.randint(0, max(1, E - 2), (T, k), dtype=id_dtype)  # the last experts get no tokens
    got = native.moe_align_block_size(ids, E, block)
    want = ops.moe_align_block_size(ids, E, block, backend="torch")
    torch.testing.assert_close(got[2], want[2], rtol=0, atol=0)
    torch.testing.assert_close(got[0], want[0], rtol=0, atol=0)
    torch.testing.assert_close(got[1], want[1], rtol=0, atol=0)


@pytest.mark.parametrize("dtype", DTYPES)
# fp32 and bf16 with <= 16 rows per expert stream weight rows (K split across tasks for (40, 1030, ...);
# K and column tails for H=130); more rows pack panels.
@pytest.mark.parametrize("T,H,E,inter,k", [(1, 64, 3, 32, 1), (7, 200, 16, 72, 2), (16, 96, 16, 64, 1),
                                           (6, 130, 3, 100, 2), (129, 100, 8, 136, 1), (129, 72, 128, 40, 2),
                                           (40, 1030, 4, 520, 1),
                                           (160, 1030, 3, 520, 1)])  # several packed K blocks, partial strips
def test_fused_moe(dtype, T, H, E, inter, k):
    x, w1, w2, tw, ids = moe_inputs(T, H, E, inter, k, dtype)
    got = native.fused_moe(x, w1, w2, tw, ids)
    torch.testing.assert_close(got, ops.fused_moe(x, w1, w2, tw, ids, backend="torch"), **TOL[dtype])
    if dtype == torch.float32:
        torch.testing.assert_close(got, moe_dense_reference(x, w1, w2, tw, ids), **TOL[dtype])


@pytest.mark.parametrize("layout", ["input-major", "output-major"])
def test_fused_moe_mixed_expert_loads(layout):
    """One call with a packed expert (40 rows), in-place ones (1 and 5 rows) and an empty one; with
    output-major weights (a CPU model's): dot tiles, row tiles and one-row dots."""
    g = torch.Generator().manual_seed(3)
    H, inter, E = 136, 72, 5
    counts = [40, 1, 0, 5, 3]
    ids = torch.tensor([e for e, c in enumerate(counts) for _ in range(c)], dtype=torch.int32)
    ids = ids[torch.randperm(len(ids), generator=g)].view(-1, 1)
    x = torch.randn(len(ids), H, generator=g)
    w1 = torch.randn(E, H, 2 * inter, generator=g) / H**0.5
    w2 = torch.randn(E, inter, H, generator=g) / inter**0.5
    if layout == "output-major":
        w1, w2 = (w.transpose(1, 2).contiguous().transpose(1, 2) for w in (w1, w2))
        assert native.output_major(w1) and native.output_major(w2)
    tw = torch.rand(len(ids), 1, generator=g)
    torch.testing.assert_close(native.fused_moe(x, w1, w2, tw, ids), moe_dense_reference(x, w1, w2, tw, ids),
                               **TOL[torch.float32])
    # no tokens at all (an expert-parallel rank that got none): empty output, no crash
    assert native.fused_moe(x[:0], w1, w2, tw[:0], ids[:0]).shape == (0, H)


@pytest.mark.parametrize("isa", ["avx2", "base"])
def test_fused_moe_other_isas(isa):
    """The AVX2 and baseline (non-AVX) kernel paths give the same results: run each in a subprocess.
    fp32 and bf16 decode rows (streamed weights), then 64 rows on 2 experts (packed panels)."""
    import subprocess
    import sys

    code = ("import torch; from amd_llama4 import ops; from amd_llama4.ops import native as N;"
            f"assert N.build_info()['cpu_isa'] in ({isa!r}, 'base');"
            "g = torch.Generator().manual_seed(0); x = torch.randn(7, 100, generator=g);"
            "w1 = torch.randn(5, 100, 80, generator=g) / 10; w2 = torch.randn(5, 40, 100, generator=g) / 7;"
            "tw, ids = ops.moe_topk_sigmoid(torch.randn(7, 5, generator=g), 2, backend='torch');"
            "torch.testing.assert_close(N.fused_moe(x, w1, w2, tw, ids),"
            " ops.fused_moe(x, w1, w2, tw, ids, backend='torch'), rtol=1e-4, atol=1e-4);"
            "b = lambda t: t.bfloat16();"
            "torch.testing.assert_close(N.fused_moe(b(x), b(w1), b(w2), tw, ids),"
            " ops.fused_moe(b(x), b(w1), b(w2), tw, ids, backend='torch'), rtol=2e-2, atol=2e-2);"
            # 64 rows on 2 experts: the packed path
            "x = torch.randn(64, 100, generator=g); tw, ids = ops.moe_topk_sigmoid(torch.randn(64, 2, generator=g), 1);"
            "torch.testing.assert_close(N.fused_moe(x, w1[:2], w2[:2], tw, ids),"
            " ops.fused_moe(x, w1[:2], w2[:2], tw, ids, backend='torch'), rtol=1e-4, atol=1e-4)")
    env = {**__import__("os").environ, "AMD_LLAMA4_CPU_ISA": isa}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


def test_fused_moe_non_contiguous_and_errors():
    x, w1, w2, tw, ids = moe_inputs(7, 64, 4, 32, 2, torch.float32)
    xt = x.t().contiguous().t()  # same values, strided
    torch.testing.assert_close(native.fused_moe(xt, w1, w2, tw, ids.long()),
                               ops.fused_moe(x, w1, w2, tw, ids, backend="torch"), **TOL[torch.float32])
    with pytest.raises(ValueError, match="w_down"):
        native.fused_moe(x, w1, w2[:, :-1], tw, ids)
    with pytest.raises(ValueError, match="topk_ids"):
        native.fused_moe(x, w1, w2, tw, torch.full_like(ids, 9))


def test_dispatch_picks_native_on_cpu():
    x = torch.randn(3, 8)
    assert dispatch.resolve("silu_and_mul", (x,), {}) is native.silu_and_mul
    big = torch.randn(2, native.SILU_CPU_MAX_NUMEL // 2 + 2)  # prefill-sized: torch's vectorised exp
    assert dispatch.resolve("silu_and_mul", (big,), {}).__module__ == "amd_llama4.ops.activation"
    assert dispatch.resolve("fused_moe", (x.half(), x.half(), x.half(), x, x), {}).__module__ == "amd_llama4.ops.moe"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("M,K,N", [(1, 1, 1), (1, 512, 512), (7, 15, 5), (16, 129, 130), (3, 1000, 7)])
@pytest.mark.parametrize("with_bias", [False, True])
def test_linear(dtype, M, K, N, with_bias):
    g = torch.Generator().manual_seed(M * 1000 + K + N)
    x = torch.randn(M, K, generator=g).to(dtype)
    w = (torch.randn(N, K, generator=g) / K**0.5).to(dtype)
    b = torch.randn(N, generator=g).to(dtype) if with_bias else None
    got = native.linear(x, w, b)
    assert got.dtype == dtype and got.shape == (M, N)
    torch.testing.assert_close(got, torch.nn.functional.linear(x, w, b), **TOL[dtype])


def test_linear_strided_batched_and_errors():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 40, generator=g).transpose(0, 1)  # [3, 2, 40], not contiguous
    w = torch.randn(24, 40, generator=g)
    torch.testing.assert_close(native.linear(x, w), torch.nn.functional.linear(x, w), **TOL[torch.float32])
    with pytest.raises(ValueError, match="weight"):
        native.linear(x, torch.randn(24, 39))
    with pytest.raises(ValueError, match="bias"):
        native.linear(x, w, torch.randn(23))
    with pytest.raises(ValueError, match="weight"):
        native.linear(x, w.bfloat16())


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("M,K,Ns", [(1, 64, (64, 16, 16)), (7, 129, (9, 33, 1)), (16, 512, (512, 512))])
def test_linear_concat(dtype, M, K, Ns):
    """Several weights over one input in one call: outputs side by side, each with its own bias (or
    none); tile ranges of one thread span weight boundaries."""
    g = torch.Generator().manual_seed(M + K)
    x = torch.randn(M, K, generator=g).to(dtype)
    ws = [(torch.randn(n, K, generator=g) / K**0.5).to(dtype) for n in Ns]
    bs = [torch.randn(n, generator=g).to(dtype) if i % 2 == 0 else None for i, n in enumerate(Ns)]
    for biases in (None, bs):
        got = native.linear_concat(x, ws, biases)
        assert got.shape == (M, sum(Ns)) and got.dtype == dtype
        torch.testing.assert_close(got, ops.linear_concat(x, ws, biases, backend="torch"), **TOL[dtype])
        torch.testing.assert_close(got, torch.cat([torch.nn.functional.linear(x, w, b) for w, b in
                                                   zip(ws, biases or [None] * len(ws))], -1), **TOL[dtype])
    assert dispatch.resolve("linear_concat", (x, ws), {}) is native.linear_concat
    with pytest.raises(ValueError, match=r"weights\[1\]"):
        native.linear_concat(x, [ws[0], ws[1][:, :-1]])
    with pytest.raises(ValueError, match="2 weights but 1 biases"):
        ops.linear_concat(x, ws[:2], [None], backend="torch")


def test_linear_dispatch_small_rows_only():
    """Native for the decode step's few rows; larger inputs (prefill) and autograd stay with torch."""
    w = torch.randn(8, 32)
    small, large = torch.randn(native.LINEAR_MAX_ROWS, 32), torch.randn(native.LINEAR_MAX_ROWS + 1, 32)
    assert dispatch.resolve("linear", (small, w), {}) is native.linear
    assert dispatch.resolve("linear", (large, w), {}).__module__ == "amd_llama4.ops.linear"
    assert dispatch.resolve("linear", (small, w.requires_grad_()), {}).__module__ == "amd_llama4.ops.linear"


@pytest.mark.parametrize("isa", ["avx2", "base"])
def test_linear_other_isas(isa):
    """The AVX2 and portable kernels (forced in a subprocess) give the same results."""
    import subprocess
    import sys

    code = f"""
import torch
from amd_llama4.ops import native as N
assert N.build_info()["cpu_isa"] in ({isa!r}, "base")
g = torch.Generator().manual_seed(0)
for M, K, n in [(1, 64, 8), (5, 131, 9), (16, 512, 33)]:
    x, w = torch.randn(M, K, generator=g), torch.randn(n, K, generator=g) / K**0.5
    for dt, tol in ((torch.float32, 1e-4), (torch.bfloat16, 2e-2)):
        torch.testing.assert_close(N.linear(x.to(dt), w.to(dt)), torch.nn.functional.linear(x.to(dt), w.to(dt)),
                                   rtol=tol, atol=tol)
"""
    env = {**__import__("os").environ, "AMD_LLAMA4_CPU_ISA": isa}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("K", [1, 31, 32, 33, 63, 65, 1023, 1024, 2048])
@pytest.mark.parametrize("N", [1, 5, 256])
def test_linear_one_row(dtype, K, N):
    """The one-row (batch-1 decode) kernel: bf16 pairs split even/odd with odd K and K below one
    vector step (tails), N not a multiple of the 4-row groups, bias in the same rounding."""
    g = torch.Generator().manual_seed(K * 7 + N)
    x = torch.randn(1, K, generator=g).to(dtype)
    w = (torch.randn(N, K, generator=g) / K**0.5).to(dtype)
    b = torch.randn(N, generator=g).to(dtype)
    want = torch.nn.functional.linear(x.float(), w.float(), b.float()).to(dtype)
    torch.testing.assert_close(native.linear(x, w, b), want, **TOL[dtype])
    torch.testing.assert_close(native.linear(x, w), torch.nn.functional.linear(x.float(), w.float()).to(dtype),
                               **TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
def test_linear_one_row_decode_calls(dtype):
    """One token through the decode step's concatenated calls (q|k|v, gate|up): outputs land in
    their columns, the two threads' ranges spanning weight boundaries; rows 1..8 agree with each
    other (the one-row and the tiled kernels)."""
    g = torch.Generator().manual_seed(5)
    x = torch.randn(8, 1024, generator=g).to(dtype)
    for Ns in ((1024, 256, 256), (2048, 2048), (13, 3, 1)):
        ws = [(torch.randn(n, 1024, generator=g) / 32).to(dtype) for n in Ns]
        want = torch.cat([torch.nn.functional.linear(x.float(), w.float()) for w in ws], -1)
        for M in (1, 2, 3, 8):
            got = native.linear_concat(x[:M], ws)
            assert got.shape == (M, sum(Ns)) and got.dtype == dtype
            torch.testing.assert_close(got.float(), want[:M], **TOL[dtype])


def test_linear_one_row_exact_products():
    """bf16 products are exact in fp32 and summed in fp32, rounded once: values chosen so that every
    partial sum is exact give the exact answer (a wrong pair order or lane mix-up would not)."""
    K = 70  # two 32-element steps + a 6-element tail on AVX-512
    x = torch.arange(1, K + 1, dtype=torch.float32).bfloat16().view(1, K)  # 1..70, exact in bf16
    w = torch.zeros(3, K, dtype=torch.bfloat16)
    w[0, ::2] = 1  # even elements only
    w[1, 1::2] = 1  # odd elements only
    w[2, -1] = 2
    got = native.linear(x, w).float()
    want = torch.tensor([[sum(range(1, K + 1, 2)), sum(range(2, K + 1, 2)), 2 * K]], dtype=torch.float32)
    torch.testing.assert_close(got, want.bfloat16().float(), rtol=0, atol=0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("T,same", [(1, False), (2, True), (5, True), (8, False), (8, True)])
def test_fused_moe_decode_rows(dtype, T, same):
    """The streamed decode path (<= 16 rows per expert) with several rows on one expert (padded
    partial-sum rows) or one row per expert, at a cols = 1024 fp32 stride (4 KB rows)."""
    g = torch.Generator().manual_seed(T)
    H, inter, E = 1024, 72, 9
    x = torch.randn(T, H, generator=g).to(dtype)
    w1 = (torch.randn(E, H, 2 * inter, generator=g) / H**0.5).to(dtype)
    w2 = (torch.randn(E, inter, H, generator=g) / inter**0.5).to(dtype)
    ids = (torch.full((T, 1), 4) if same else torch.arange(T).view(T, 1) % E).to(torch.int32)
    tw = torch.rand(T, 1, generator=g)
    torch.testing.assert_close(native.fused_moe(x, w1, w2, tw, ids), ops.fused_moe(x, w1, w2, tw, ids, backend="torch"),
                               **TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("T", [1, 2, 3])
def test_fused_moe_decode_column_tails(dtype, T):
    """The streamed decode path's column and K splits on one expert: VW-wide column steps then single
    columns; K runs 8 weight rows per pass for 1-2 rows (4 for 3), then a K tail one row at a time.
    H=77: down's 77 columns and gate_up's 77 K rows end in tails (77 = 9*8 + 5 = 19*4 + 1)."""
    g = torch.Generator().manual_seed(17 + T)
    H, inter, E = 77, 56, 3
    x = torch.randn(T, H, generator=g).to(dtype)
    w1 = (torch.randn(E, H, 2 * inter, generator=g) / H**0.5).to(dtype)
    w2 = (torch.randn(E, inter, H, generator=g) / inter**0.5).to(dtype)
    ids = torch.full((T, 1), 1, dtype=torch.int32)
    tw = torch.rand(T, 1, generator=g)
    got = native.fused_moe(x, w1, w2, tw, ids)
    torch.testing.assert_close(got, ops.fused_moe(x, w1, w2, tw, ids, backend="torch"), **TOL[dtype])
    torch.testing.assert_close(got.float(), moe_dense_reference(x.float(), w1.float(), w2.float(), tw, ids),
                               **TOL[dtype])
