"""The static (vectorised, sync-free) torch paged decode equals the reference loop: odd shapes, GQA,
chunked masks with freed chunks, padded table columns, fp8 KV with per-tensor and per-head scales."""
import pytest
import torch

from amd_llama4.ops.paged_attention import paged_attention_decode, paged_attention_decode_static
from tests.ops.paged_attention_cases import make_case


def _case(B, Hq, Hkv, D, page, lens, first, dtype=torch.float32, spare=2, seed=0):
    """A decode step (one new token per sequence) from the shared paged-cache case builder."""
    c = make_case(lens, [1] * B, first, Hq, Hkv, D, page, dtype, spare, seed)
    return c["q"], c["k_cache"], c["v_cache"], c["block_tables"], c["seq_lens"], c["first_pos"], c["q_pos"]


@pytest.mark.parametrize("chunk", [None, 8, 32])
def test_static_equals_reference(chunk):
    # one key; crossing a chunk boundary; a chunked table whose first 2 chunks were freed; odd page 5
    args = _case(4, 6, 2, 12, 5, [1, 45, 50, 23], [0, 0, 64, 3], seed=7)
    out = paged_attention_decode_static(*args, 0.17, chunk)
    ref = paged_attention_decode.reference(*args, 0.17, chunk)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_static_bf16_and_torch_backend_route():
    args = _case(3, 8, 8, 16, 4, [9, 2, 17], [0, 0, 0], dtype=torch.bfloat16, seed=3)
    ref = paged_attention_decode.reference(*args, 0.25, 8)
    torch.testing.assert_close(paged_attention_decode_static(*args, 0.25, 8), ref, atol=2e-2, rtol=2e-2)
    # the dispatcher's torch backend is the static form; the reference stays the loop
    assert paged_attention_decode.reference is not paged_attention_decode_static
    torch.testing.assert_close(paged_attention_decode(*args, 0.25, 8, backend="torch"),
                               paged_attention_decode_static(*args, 0.25, 8), atol=0, rtol=0)


@pytest.mark.parametrize("per_head", [False, True])
def test_static_fp8_scales(per_head):
    q, kc, vc, bt, lens, first, qpos = _case(3, 4, 2, 8, 16, [5, 40, 33], [0, 0, 32], seed=5)
    s = torch.tensor([0.011, 0.007]) if per_head else torch.tensor(0.009)
    ks, vs = s, s * 1.5
    cast = lambda c, sc: (c / sc.reshape(-1)[:, None]).clamp(-448, 448).to(torch.float8_e4m3fn)  # noqa: E731
    kq, vq = cast(kc, ks), cast(vc, vs)
    out = paged_attention_decode_static(q, kq, vq, bt, lens, first, qpos, 0.2, 32, ks, vs)
    ref = paged_attention_decode.reference(q, kq, vq, bt, lens, first, qpos, 0.2, 32, ks, vs)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(out, paged_attention_decode.reference(q, kq, vq, bt, lens, first, qpos, 0.2, 32,
                                                                    ks, ks))  # v_scale matters


def test_static_checks_inputs():
    q, kc, vc, bt, lens, first, qpos = _case(2, 4, 2, 8, 4, [3, 9], [0, 0])
    with pytest.raises(ValueError, match="first_pos"):
        paged_attention_decode_static(q, kc, vc, bt, lens, first[:1], qpos, 0.25)
