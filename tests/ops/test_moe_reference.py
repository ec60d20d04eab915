"""The sparse torch MoE (the reference every kernel matches) against the dense formulation."""
import pytest
import torch

from amd_llama4 import ops
from amd_llama4.ops.moe import moe_dense_reference


def _inputs(T, H, I, E, k, dtype=torch.float32, seed=0, skip_experts=()):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(T, H, generator=g).to(dtype)
    w1 = (torch.randn(E, H, 2 * I, generator=g) * 0.1).to(dtype)
    w2 = (torch.randn(E, I, H, generator=g) * 0.1).to(dtype)
    logits = torch.randn(T, E, generator=g)
    if skip_experts:
        logits[:, list(skip_experts)] = -1e4  # never selected: empty experts
    w, ids = ops.moe_topk_sigmoid(logits, k, backend="torch")
    return x, w1, w2, w, ids


@pytest.mark.parametrize("T,H,I,E,k", [(1, 48, 40, 3, 1), (7, 100, 36, 16, 2), (129, 72, 24, 128, 1),
                                       (33, 64, 64, 5, 2)])
def test_sparse_equals_dense(T, H, I, E, k):
    x, w1, w2, w, ids = _inputs(T, H, I, E, k, skip_experts=(0,) if E > 3 else ())
    got = ops.fused_moe(x, w1, w2, w, ids, backend="torch")
    torch.testing.assert_close(got, moe_dense_reference(x, w1, w2, w, ids), atol=1e-5, rtol=1e-5)


def test_non_contiguous_and_bf16():
    x, w1, w2, w, ids = _inputs(9, 64, 32, 4, 2, dtype=torch.bfloat16)
    xt = x.t().contiguous().t()  # same values, column-major strides
    assert not xt.is_contiguous()
    got = ops.fused_moe(xt, w1, w2, w, ids, backend="torch")
    want = moe_dense_reference(x.float(), w1.float(), w2.float(), w, ids)
    torch.testing.assert_close(got.float(), want, atol=2e-2, rtol=2e-2)


def test_topk_sigmoid_and_align():
    logits = torch.tensor([[0.5, 2.0, -1.0], [3.0, 1.0, 2.5], [-1.0, -2.0, 0.0]])
    w, ids = ops.moe_topk_sigmoid(logits, 2, backend="torch")
    assert ids.dtype == torch.int32 and w.dtype == torch.float32
    assert ids.tolist() == [[1, 0], [0, 2], [2, 0]]
    torch.testing.assert_close(w, torch.sigmoid(torch.tensor([[2.0, 0.5], [3.0, 2.5], [0.0, -1.0]])))
    sorted_ids, expert_ids, total = ops.moe_align_block_size(ids, num_experts=4, block_size=4, backend="torch")
    # flat slots (token*k + j): expert 0 <- 1, 2, 5; expert 1 <- 0; expert 2 <- 3, 4; expert 3 <- none
    # capacity from shapes only: 6 slots + 4 experts x 3 pad rows = 18 -> 20 (whole blocks)
    assert total.dtype == torch.int32 and total.tolist() == [12] and expert_ids.tolist() == [0, 1, 2, -1, -1]
    # 6 = T*k sentinel pads each group and fills the unused tail
    assert sorted_ids.tolist() == [1, 2, 5, 6, 0, 6, 6, 6, 3, 4, 6, 6] + [6] * 8


@pytest.mark.parametrize("T,k,E,block", [(0, 1, 4, 16), (1, 1, 1, 1), (5, 2, 7, 3), (37, 1, 128, 16)])
def test_align_against_a_loop(T, k, E, block):
    """The vectorised reference against the definition, written as a plain loop."""
    ids = torch.randint(0, max(1, E - 2), (T, k), generator=torch.Generator().manual_seed(T))
    sorted_ids, expert_ids, total = ops.moe_align_block_size(ids, E, block, backend="torch")
    want_sorted, want_experts = [], []
    for e in range(E):
        slots = [i for i, v in enumerate(ids.reshape(-1).tolist()) if v == e]
        if slots:
            slots += [T * k] * (-len(slots) % block)
            want_sorted += slots
            want_experts += [e] * (len(slots) // block)
    P = len(want_sorted)
    assert total.tolist() == [P]
    assert sorted_ids.shape[0] % block == 0 and sorted_ids.shape[0] >= P
    assert sorted_ids.tolist() == want_sorted + [T * k] * (sorted_ids.shape[0] - P)
    assert expert_ids.tolist() == want_experts + [-1] * (sorted_ids.shape[0] // block - P // block)


def test_bad_shapes_named():
    x, w1, w2, w, ids = _inputs(4, 16, 8, 3, 1)
    with pytest.raises(ValueError, match="w_down must be"):
        ops.fused_moe(x, w1, w2[:, :4], w, ids, backend="torch")
    with pytest.raises(ValueError, match="topk_ids"):
        ops.fused_moe(x, w1, w2, w[:2], ids[:2], backend="torch")
