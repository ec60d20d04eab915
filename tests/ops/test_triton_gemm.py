"""Triton FP8 scaled matmul (per-tensor, per-token x per-channel, 128x128 blocks) against the torch
reference, and against torch._scaled_mm on GPUs that have it. Interpreter on CPU."""

import pytest
import torch
from triton_env import require_triton

DEV = require_triton()

from amd_llama4.ops.fp8 import quantize_fp8  # noqa: E402
from amd_llama4.ops.fp8_gemm import fp8_gemm  # noqa: E402


def formats():
    if DEV == "cpu":
        return ["e4m3fn", "e4m3fnuz"]
    from amd_llama4 import platform
    return [platform.fp8_format()]


def _operands(M, N, K, fmt, a_gran, b_gran, block=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(M, K, generator=g) * 2
    b = torch.randn(N, K, generator=g) / K ** 0.5
    aq, a_s = quantize_fp8(a, fmt, a_gran, (1, block[1]) if block else None)
    bq, b_s = quantize_fp8(b, fmt, b_gran, block)
    return [t.to(DEV) for t in (aq, a_s, bq, b_s)]


@pytest.mark.parametrize("fmt", formats())
@pytest.mark.parametrize("M,N,K", [(1, 64, 128), (7, 129, 200), (129, 96, 72)])
@pytest.mark.parametrize("gran", [("row", "row"), ("tensor", "tensor"), ("row", "tensor")])
def test_fp8_gemm_channel(fmt, M, N, K, gran):
    aq, a_s, bq, b_s = _operands(M, N, K, fmt, *gran, seed=M + N)
    out = fp8_gemm(aq, a_s, bq, b_s, out_dtype=torch.float32, backend="triton")
    ref = fp8_gemm.reference(aq, a_s, bq, b_s, out_dtype=torch.float32)
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("fmt", formats())
@pytest.mark.parametrize("M,N,K", [(1, 128, 128), (7, 129, 300), (65, 200, 256)])
def test_fp8_gemm_block(fmt, M, N, K):
    aq, a_s, bq, b_s = _operands(M, N, K, fmt, "block", "block", block=(128, 128), seed=M)
    out = fp8_gemm(aq, a_s, bq, b_s, block=(128, 128), out_dtype=torch.float32, backend="triton")
    ref = fp8_gemm.reference(aq, a_s, bq, b_s, block=(128, 128), out_dtype=torch.float32)
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)


def test_fp8_gemm_small_block_and_out_dtype():
    fmt = formats()[0]
    aq, a_s, bq, b_s = _operands(9, 70, 96, fmt, "block", "block", block=(32, 32), seed=1)
    out = fp8_gemm(aq, a_s, bq, b_s, block=(32, 32), out_dtype=torch.float16, backend="triton")
    ref = fp8_gemm.reference(aq, a_s, bq, b_s, block=(32, 32), out_dtype=torch.float16)
    assert out.dtype == torch.float16
    torch.testing.assert_close(out, ref, atol=2e-3, rtol=2e-3)


def test_fp8_gemm_transposed_weight_view():
    fmt = formats()[0]
    aq, a_s, bq, b_s = _operands(5, 48, 64, fmt, "row", "row", seed=2)
    bq_t = bq.t().contiguous().t()  # [N, K] view of a column-major buffer
    out = fp8_gemm(aq, a_s, bq_t, b_s, out_dtype=torch.float32, backend="triton")
    torch.testing.assert_close(out, fp8_gemm.reference(aq, a_s, bq, b_s, out_dtype=torch.float32), atol=1e-4, rtol=1e-4)


def test_fp8_gemm_input_errors():
    fmt = formats()[0]
    aq, a_s, bq, b_s = _operands(4, 32, 64, fmt, "row", "row")
    with pytest.raises(ValueError, match="b_scale"):
        fp8_gemm(aq, a_s, bq, b_s[:3], backend="triton")
    with pytest.raises(ValueError, match="share one fp8 dtype"):
        fp8_gemm(aq, a_s, bq.float(), b_s, backend="triton")


@pytest.mark.skipif(DEV == "cpu" or not hasattr(torch, "_scaled_mm"), reason="torch._scaled_mm needs a GPU")
def test_fp8_gemm_matches_scaled_mm():
    fmt = formats()[0]
    aq, a_s, bq, b_s = _operands(64, 256, 512, fmt, "row", "row")
    ref = torch._scaled_mm(aq, bq.t(), scale_a=a_s, scale_b=b_s.t(), out_dtype=torch.bfloat16)
    out = fp8_gemm(aq, a_s, bq, b_s, backend="triton")
    torch.testing.assert_close(out, ref, atol=2e-2, rtol=2e-2)
