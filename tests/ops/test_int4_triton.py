"""Triton w4a16 GEMM and fused MoE (amd_llama4/ops/triton/int4.py) against the torch references:
odd row counts, group sizes 32 / 128, symmetric and zero-point weights, bf16 and fp32 activations,
non-contiguous inputs, empty experts, top-k 1 and 2. Interpreter on CPU, the GPU when there is one."""
import pytest
import torch
from triton_env import require_triton

DEV = require_triton()

from amd_llama4.ops import int4 as I  # noqa: E402
from amd_llama4.ops.triton import int4 as T4  # noqa: E402

# fp32 on CPU only: GPU dots of fp32 inputs would be tf32. bf16: the weights are exact (small
# integers) in the dot, so the error is the bf16 rounding of the output and of x / h.
DTYPES = [torch.bfloat16] + ([torch.float32] if DEV == "cpu" else [])
TOL = {torch.float32: dict(rtol=1e-4, atol=1e-4), torch.bfloat16: dict(rtol=2e-2, atol=2e-2)}


def _weights(shape, G, symmetric, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(*shape, generator=g) * shape[-1] ** -0.5
    return [t if t is None else t.to(DEV) for t in I.quantize_int4(w.to(dtype), G, symmetric)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("M", [1, 7, 129])
@pytest.mark.parametrize("G,symmetric", [(32, False), (128, True)])
def test_int4_gemm(dtype, M, G, symmetric):
    N, K = 96, 256
    q, s, z = _weights((N, K), G, symmetric, dtype, seed=M)
    x = torch.randn(M, K, generator=torch.Generator().manual_seed(M)).to(dtype).to(DEV)
    out = I.int4_linear(x, q, s, z, G, backend="triton")
    assert out.dtype == dtype and out.shape == (M, N)
    torch.testing.assert_close(out, I.int4_linear(x, q, s, z, G, backend="torch"), **TOL[dtype])


def test_int4_gemm_noncontiguous_x_odd_n_and_leading_dims():
    dtype = DTYPES[-1]
    N, K, G = 72, 128, 64  # N not a multiple of BLOCK_N
    q, s, z = _weights((N, K), G, False, dtype, seed=3)
    base = torch.randn(3, 5, 2 * K).to(dtype).to(DEV)
    x = base[..., ::2]  # stride 2 along K, and [3, 5] leading dims
    out = I.int4_linear(x, q, s, z, G, backend="triton")
    assert out.shape == (3, 5, N)
    torch.testing.assert_close(out, I.int4_linear(x.contiguous(), q, s, z, G, backend="torch"), **TOL[dtype])
    xt = torch.randn(K, 4).to(dtype).to(DEV).t()  # a transposed view: strides (1, 4)
    torch.testing.assert_close(I.int4_linear(xt, q, s, z, G, backend="triton"),
                               I.int4_linear(xt, q, s, z, G, backend="torch"), **TOL[dtype])


def test_int4_gemm_explicit_tiles_and_empty():
    dtype = DTYPES[-1]
    q, s, z = _weights((64, 128), 128, True, dtype, seed=4)
    x = torch.randn(20, 128).to(dtype).to(DEV)
    ref = I.int4_linear(x, q, s, z, 128, backend="torch")
    for t in (T4.Int4Tiles(16, 32, 32), T4.Int4Tiles(32, 64, 128)):  # BLOCK_K 32 .. = the group
        torch.testing.assert_close(T4.int4_linear(x, q, s, z, 128, tiles=t), ref, **TOL[dtype])
    assert T4.int4_linear(x[:0], q, s, z, 128).shape == (0, 64)
    with pytest.raises(ValueError, match="BLOCK_K 64 must divide group_size 32"):
        q32, s32, z32 = _weights((64, 128), 32, True, dtype, seed=4)
        T4.int4_linear(x, q32, s32, z32, 32, tiles=T4.Int4Tiles(16, 32, 64))


def test_tiles_for_clamps_block_k_to_the_group():
    assert T4.tiles_for(1, 32).BLOCK_K == 32 and T4.tiles_for(1, 128).BLOCK_K == 64
    assert T4.tiles_for(1, 128).BLOCK_M == 16 and T4.tiles_for(200, 64).BLOCK_M == 64


def _routing(T, k, experts, seed):
    g = torch.Generator().manual_seed(seed)
    pool = torch.tensor(experts)
    ids = torch.stack([pool[torch.randperm(len(pool), generator=g)[:k]] for _ in range(T)]).to(torch.int32)
    return torch.rand(T, k, generator=g).to(DEV), ids.to(DEV)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("T,k", [(1, 1), (7, 2), (40, 1)])
@pytest.mark.parametrize("G,symmetric", [(32, False), (128, True)])
def test_fused_moe_int4(dtype, T, k, G, symmetric):
    E, H, inter = 6, 256, 128
    w13 = _weights((E, 2 * inter, H), G, symmetric, dtype, seed=T)
    w2 = _weights((E, H, inter), G, symmetric, dtype, seed=T + 1)
    x = torch.randn(T, H, generator=torch.Generator().manual_seed(T)).to(dtype).to(DEV)
    tw, ids = _routing(T, k, [0, 2, 3, 5], seed=T)  # experts 1 and 4 get no token
    out = I.fused_moe_int4(x, *w13, *w2, tw, ids, G, backend="triton")
    assert out.dtype == dtype and out.shape == (T, H)
    torch.testing.assert_close(out, I.fused_moe_int4(x, *w13, *w2, tw, ids, G, backend="torch"), **TOL[dtype])


def test_fused_moe_int4_large_tiles_int64_ids_and_empty_batch():
    dtype = DTYPES[-1]
    E, H, inter, G = 3, 128, 64, 64
    w13 = _weights((E, 2 * inter, H), G, False, dtype, seed=9)
    w2 = _weights((E, H, inter), G, False, dtype, seed=10)
    x = torch.randn(5, H).to(dtype).to(DEV)
    tw, ids = _routing(5, 2, [0, 1, 2], seed=5)
    ref = I.fused_moe_int4(x, *w13, *w2, tw, ids, G, backend="torch")
    out = T4.fused_moe_int4(x, *w13, *w2, tw, ids.long(), G, tiles=T4.Int4Tiles(64, 32, 64))
    torch.testing.assert_close(out, ref, **TOL[dtype])
    assert T4.fused_moe_int4(x[:0], *w13, *w2, tw[:0], ids[:0], G).shape == (0, H)


def test_triton_int4_bad_inputs_name_the_tensor():
    q, s, z = _weights((32, 64), 32, False, torch.float32, seed=0)
    x = torch.randn(2, 64).to(DEV)
    with pytest.raises(ValueError, match="zeros must be uint8"):
        T4.int4_linear(x, q, s, s, 32)
    with pytest.raises(ValueError, match="x must be floating point"):
        T4.int4_linear(x.to(torch.int32), q, s, z, 32)
