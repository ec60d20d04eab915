"""Triton MoE kernels (routing, per-token FP8 quantisation, fused MoE bf16/fp16/fp32 and FP8 w8a8) against
the torch references. On CPU they run in the Triton interpreter; on a GPU, natively."""

import pytest
import torch
from triton_env import require_triton

DEV = require_triton()

from amd_llama4.ops import dispatch  # noqa: E402
from amd_llama4.ops.fp8 import quantize_fp8  # noqa: E402
from amd_llama4.ops.moe import fused_moe, moe_topk_sigmoid  # noqa: E402
from amd_llama4.ops.moe_fp8 import fused_moe_fp8, quantize_moe_weights  # noqa: E402

TOL = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 3e-2}


def formats():
    if DEV == "cpu":
        return ["e4m3fn", "e4m3fnuz"]
    from amd_llama4 import platform
    return [platform.fp8_format()]


def _moe_inputs(T, H, inter, E, k, dtype, seed=0, empty_expert=None):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(T, H, generator=g).to(dtype)
    w1 = (torch.randn(E, H, 2 * inter, generator=g) / H ** 0.5).to(dtype)
    w2 = (torch.randn(E, inter, H, generator=g) / inter ** 0.5).to(dtype)
    logits = torch.randn(T, E, generator=g)
    if empty_expert is not None:
        logits[:, empty_expert] = -1e4
    vals, ids = torch.topk(logits, k, dim=-1)
    w = torch.sigmoid(vals)
    return [t.to(DEV) for t in (x, w1, w2, w, ids.to(torch.int32))]


@pytest.mark.parametrize("T,E", [(1, 16), (7, 5), (129, 128)])
def test_top1_sigmoid(T, E):
    logits = torch.randn(T, E).to(torch.float16).to(DEV)
    w, ids = moe_topk_sigmoid(logits, 1, backend="triton")
    rw, rids = moe_topk_sigmoid.reference(logits, 1)
    assert ids.dtype == torch.int32 and w.dtype == torch.float32
    torch.testing.assert_close(ids, rids)
    torch.testing.assert_close(w, rw, atol=1e-6, rtol=1e-6)


def test_top1_sigmoid_rejects_top2():
    with pytest.raises(ValueError, match="top-1"):
        moe_topk_sigmoid(torch.randn(3, 4, device=DEV), 2, backend="triton")


@pytest.mark.parametrize("fmt", formats())
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_quantize_rows_bit_exact(fmt, dtype):
    from amd_llama4.ops.triton.quant import quantize_fp8_rows
    fmax = {"e4m3fn": 448.0, "e4m3fnuz": 240.0}[fmt]
    x = torch.randn(7, 1100) * torch.logspace(-3, 2, 7)[:, None]
    # Values whose rounding carries into the next binade (the interpreter's fp8-cast bug) and subnormals.
    x[0, :8] = torch.tensor([0.96875, 1.96875, 3.9375, -7.875, 0.001, -0.0005, 0.0, fmax / 2])
    x[1] = 0.0  # all-zero row: scale 1e-12 / max
    x = x.to(dtype).to(DEV)
    q, s = quantize_fp8_rows(x, fmt)
    rq, rs = quantize_fp8(x, fmt, "row")
    assert q.dtype == rq.dtype and s.shape == rs.shape
    torch.testing.assert_close(s, rs, atol=0, rtol=0)
    assert torch.equal(q.view(torch.uint8), rq.view(torch.uint8)), "fp8 codes differ from the reference"


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
@pytest.mark.parametrize("T,H,inter,E,k", [(1, 64, 32, 4, 1), (7, 96, 80, 5, 1), (129, 72, 48, 16, 1),
                                           (33, 64, 40, 6, 2)])
def test_fused_moe(dtype, T, H, inter, E, k):
    x, w1, w2, w, ids = _moe_inputs(T, H, inter, E, k, dtype, seed=T)
    out = fused_moe(x, w1, w2, w, ids, backend="triton")
    ref = fused_moe.reference(x, w1, w2, w, ids)
    assert out.shape == ref.shape and out.dtype == dtype
    torch.testing.assert_close(out, ref, atol=TOL[dtype], rtol=TOL[dtype])


def test_fused_moe_empty_expert_and_noncontiguous():
    x, w1, w2, w, ids = _moe_inputs(37, 64, 48, 6, 1, torch.float16, seed=3, empty_expert=2)
    assert not (ids == 2).any()
    xs = torch.zeros(x.shape[0], 2 * x.shape[1], dtype=x.dtype, device=DEV)[:, 1::2]
    xs.copy_(x)  # strided rows and columns, same values
    w2t = w2.transpose(1, 2).contiguous().transpose(1, 2)  # column-major experts
    out = fused_moe(xs, w1, w2t, w, ids, backend="triton")
    torch.testing.assert_close(out, fused_moe.reference(x, w1, w2, w, ids), atol=1e-2, rtol=1e-2)


def test_fused_moe_tile_configs():
    from amd_llama4.ops.triton.configs import TileConfig
    from amd_llama4.ops.triton.moe import fused_moe as tmoe
    x, w1, w2, w, ids = _moe_inputs(19, 64, 80, 4, 1, torch.float32, seed=5)
    ref = fused_moe.reference(x, w1, w2, w, ids)
    for cfg in (TileConfig(16, 32, 32, 1), TileConfig(32, 64, 16, 4)):
        torch.testing.assert_close(tmoe(x, w1, w2, w, ids, config=cfg), ref, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("fmt", formats())
@pytest.mark.parametrize("T,k", [(1, 1), (7, 1), (129, 1), (20, 2)])
def test_fused_moe_fp8(fmt, T, k):
    dtype = torch.float16 if DEV == "cpu" else torch.bfloat16
    x, w1, w2, w, ids = _moe_inputs(T, 96, 80, 6, k, dtype, seed=11 + T)
    w1q, w1s = quantize_moe_weights(w1, fmt)
    w2q, w2s = quantize_moe_weights(w2, fmt)
    out = fused_moe_fp8(x, w1q, w1s, w2q, w2s, w, ids, fmt, backend="triton")
    ref = fused_moe_fp8.reference(x, w1q, w1s, w2q, w2s, w, ids, fmt)
    assert out.dtype == dtype
    # The kernel quantises x and applies w to the accumulator; the reference quantises w * x: the same
    # values up to fp32 rounding, which may flip an fp8 rounding (one fp8 step, ~6%) now and then.
    scale = ref.float().abs().max().item()
    torch.testing.assert_close(out.float(), ref.float(), atol=0.04 * scale, rtol=0.03)
    assert (out.float() - ref.float()).abs().mean() < 2e-3 * scale
    # and both are close to the unquantised op
    full = fused_moe.reference(x.float(), w1.float(), w2.float(), w, ids)
    assert (out.float() - full).abs().max() < 0.15 * full.abs().max()


def test_fused_moe_fp8_rejects_wrong_format():
    x, w1, w2, w, ids = _moe_inputs(3, 64, 32, 2, 1, torch.float16)
    w1q, w1s = quantize_moe_weights(w1, "e4m3fn")
    w2q, w2s = quantize_moe_weights(w2, "e4m3fn")
    with pytest.raises(ValueError, match="w_gate_up_q must be"):
        fused_moe_fp8(x, w1q, w1s, w2q, w2s, w, ids, "e4m3fnuz", backend="triton")


def test_supports_cpu_only_under_interpreter(monkeypatch):
    import amd_llama4.ops.triton  # noqa: F401  (registers)
    impl = dispatch._REGISTRY["fused_moe"]["triton"]
    x, w1, w2, w, ids = _moe_inputs(3, 64, 32, 2, 1, torch.float16)
    if DEV == "cpu":
        monkeypatch.delenv("TRITON_INTERPRET", raising=False)
        assert not impl.supports(x, w1, w2, w, ids)
        monkeypatch.setenv("TRITON_INTERPRET", "1")
        assert impl.supports(x, w1, w2, w, ids)
    else:
        assert impl.supports(x, w1, w2, w, ids)
    assert "triton" in dispatch.available("fused_moe_fp8")


@pytest.mark.parametrize("T,k,E,block", [(0, 1, 4, 16), (1, 1, 1, 16), (7, 2, 5, 4), (37, 1, 16, 16),
                                         (13, 3, 9, 1), (20, 2, 128, 32)])
@pytest.mark.parametrize("id_dtype", [torch.int32, torch.int64])
def test_align_block_size_matches_reference(T, k, E, block, id_dtype):
    from amd_llama4.ops.moe import moe_align_block_size

    g = torch.Generator().manual_seed(T * 31 + E)
    # distinct experts per token (as top-k gives), the last two experts empty where E allows
    ids = torch.stack([torch.randperm(max(k, E - 2), generator=g)[:k] for _ in range(T)]) if T else \
        torch.empty(0, k, dtype=torch.long)
    ids = ids.to(id_dtype).to(DEV)
    got = moe_align_block_size(ids, E, block, backend="triton")
    want = moe_align_block_size.reference(ids, E, block)
    for name, a, b in zip(("sorted_ids", "expert_ids", "num_tokens_post_padded"), got, want):
        assert a.dtype == torch.int32 and a.device == ids.device, name
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=lambda m: f"{name}: {m}")
