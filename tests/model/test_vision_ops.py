"""The vision tower's ops (ops/vision.py) against plain math and transformers' helpers: odd token
counts (1, 7, 129), empty batches, non-contiguous inputs, fp32 and bf16."""
import math

import pytest
import torch

from amd_llama4.ops.vision import gelu, layer_norm, vision_attention, vision_rope, vision_rope_freqs

TOL = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.bfloat16: dict(rtol=2e-2, atol=2e-2)}
hf_llama4 = pytest.importorskip("transformers.models.llama4.modeling_llama4")


def _naive_attention(q, k, v, scale):
    s = torch.einsum("nphd,nqhd->nhpq", q.double(), k.double()) * scale
    return torch.einsum("nhpq,nqhd->nphd", s.softmax(-1), v.double())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("P", [1, 7, 129])
def test_vision_attention_is_full_non_causal_softmax(P, dtype):
    g = torch.Generator().manual_seed(P)
    # non-contiguous q, k, v: one strided [N, P, 3, Hn, D] projection, as the tower makes them
    qkv = torch.randn(3, P, 3, 2, 16, generator=g).to(dtype)
    q, k, v = qkv.unbind(2)
    assert not q.is_contiguous()
    out = vision_attention(q, k, v, 16 ** -0.5)
    assert out.shape == (3, P, 2, 16) and out.dtype == dtype
    torch.testing.assert_close(out.double(), _naive_attention(q, k, v, 16 ** -0.5), **TOL[dtype])
    # non-causal: the first token sees the last one
    if P > 1:
        v2 = v.clone()
        v2[:, -1] += 1
        assert not torch.equal(vision_attention(q, k, v2, 0.25)[:, 0], vision_attention(q, k, v, 0.25)[:, 0])


def test_vision_attention_empty_batch():
    z = torch.randn(0, 7, 2, 8)
    assert vision_attention(z, z, z, 0.5).shape == (0, 7, 2, 8)


@pytest.mark.parametrize("patches,head_dim", [(2, 8), (4, 16), (24, 88)])  # 24 x 24, 88: the released tower
def test_vision_rope_freqs_equal_transformers(patches, head_dim):
    cfg = hf_llama4.Llama4VisionConfig(image_size=patches * 14, patch_size=14, hidden_size=head_dim * 2,
                                       num_attention_heads=2, rope_theta=10000.0)
    want = hf_llama4.Llama4VisionRotaryEmbedding._compute_freqs_ci(cfg)  # [P + 1, 1, D/2]
    got = vision_rope_freqs(patches, head_dim, 10000.0)
    assert got.shape == (patches ** 2 + 1, head_dim // 2) and got.dtype == torch.complex64
    torch.testing.assert_close(got, want[:, 0], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_vision_rope_equals_transformers(dtype):
    g = torch.Generator().manual_seed(0)
    P, D = 17, 16
    freqs = vision_rope_freqs(4, D, 10000.0)
    q = torch.randn(3, 8, P, D, generator=g).to(dtype).transpose(1, 2)  # [N, P, Hn, D], non-contiguous
    k = torch.randn(3, P, 8, D, generator=g).to(dtype)
    want_q, want_k = hf_llama4.vision_apply_rotary_emb(q, k, freqs[:, None, :])
    torch.testing.assert_close(vision_rope(q, freqs), want_q, rtol=0, atol=0)
    torch.testing.assert_close(vision_rope(k, freqs), want_k, rtol=0, atol=0)
    assert vision_rope(q[:0], freqs).shape == (0, P, 8, D)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("H", [1, 7, 129])
def test_layer_norm_and_gelu_equal_torch_nn(H, dtype):
    g = torch.Generator().manual_seed(H)
    x = torch.randn(5, 2 * H, generator=g)[:, ::2].to(dtype)  # non-contiguous rows
    ln = torch.nn.LayerNorm(H, eps=1e-5).to(dtype)
    with torch.no_grad():
        ln.weight.copy_(torch.randn(H, generator=g))
        ln.bias.copy_(torch.randn(H, generator=g))
        torch.testing.assert_close(layer_norm(x, ln.weight, ln.bias, 1e-5), ln(x), **TOL[dtype])
    want = 0.5 * x.double() * (1 + torch.erf(x.double() / math.sqrt(2)))  # exact, not tanh
    torch.testing.assert_close(gelu(x).double(), want, **TOL[dtype])
    assert layer_norm(x[:0], None, None, 1e-5).shape == (0, H)
