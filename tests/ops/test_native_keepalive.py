"""A native launcher's temporaries (`.contiguous()` / dtype copies made inside the call expression)
stay alive until the kernel has read them: each TensorRef owns its tensor. Before, a copy could be
freed when `_ref` returned and its memory handed to the next copy of the same call."""
import pytest
import torch

from amd_llama4.ops import moe, native

pytestmark = pytest.mark.skipif(not native.available(), reason="needs the native extension")


def test_ref_owns_its_tensor():
    import gc

    r = native._ref(torch.arange(6.0) * 2, "t")  # the only reference to the product is the ref's
    gc.collect()
    torch.testing.assert_close(r.owner, torch.arange(6.0) * 2)
    assert r.shape == [6] and r.name == "t"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_moe_with_non_contiguous_weights(dtype):
    g = torch.Generator().manual_seed(0)
    T, H, I, E = 7, 64, 96, 4
    x = torch.randn(T, H, generator=g).to(dtype)
    # both weights non-contiguous: the launcher copies them inside one call expression
    w13 = torch.randn(E, 2 * I, H, generator=g).to(dtype).transpose(1, 2)  # [E, H, 2I]
    w2 = torch.randn(E, H, I, generator=g).to(dtype).transpose(1, 2)  # [E, I, H]
    assert not w13.is_contiguous() and not w2.is_contiguous()
    logits = torch.randn(T, E, generator=g)
    tw, ids = torch.sigmoid(logits).topk(2, dim=-1)
    ref = moe.fused_moe(x, w13.contiguous(), w2.contiguous(), tw, ids.int(), backend="torch")
    for _ in range(3):  # allocator reuse is what corrupted it: repeat
        got = native.fused_moe(x, w13, w2, tw, ids.int())
        tol = dict(atol=1e-4, rtol=1e-4) if dtype == torch.float32 else dict(atol=3e-2, rtol=3e-2)
        torch.testing.assert_close(got, ref, **tol)
