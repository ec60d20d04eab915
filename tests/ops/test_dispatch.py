"""The dispatch's per-step memo and candidate cache: reuse only for the very same unchanged tensors."""
import importlib

import torch

from amd_llama4 import ops
from amd_llama4.ops import dispatch


def test_same_inputs_memo_reuses_only_identical_unchanged_tensors():
    calls = []

    def f(t, n):
        calls.append(n)
        return t * n

    a = torch.arange(4)
    first = dispatch.same_inputs_memo(f, a, 2)
    assert dispatch.same_inputs_memo(f, a, 2) is first and calls == [2]
    dispatch.same_inputs_memo(f, a, 3)  # other non-tensor argument
    dispatch.same_inputs_memo(f, a.clone(), 2)  # equal values, another tensor
    assert calls == [2, 3, 2]
    a.add_(1)  # in-place change bumps the version counter
    torch.testing.assert_close(dispatch.same_inputs_memo(f, a, 2), (torch.arange(4) + 1) * 2)
    assert calls == [2, 3, 2, 2]


def test_memoised_mask_and_rope_match_fresh_computation():
    pos = torch.tensor([[5, 6, 7], [-1, 0, 1]])
    kpos = torch.tensor([[0, 3, 4, 5, 6, 7], [0, 1, -1, -1, -1, -1]])
    m1 = ops.attention_mask(pos, kpos, 4)
    pos[0, 0] = 4  # same object, new contents: must not reuse the old mask
    fresh = importlib.import_module("amd_llama4.ops.attention")._attention_mask  # the module, not the op
    torch.testing.assert_close(ops.attention_mask(pos, kpos, 4), fresh(pos, kpos, 4))
    assert not torch.equal(m1, ops.attention_mask(pos, kpos, 4))
    x = torch.randn(2, 3, 2, 8)
    inv = ops.rope_inv_freq(8, 10000.0, None)
    torch.testing.assert_close(ops.apply_rope(x, pos, inv), ops.apply_rope.reference(x, pos.clone(), inv))


def test_register_invalidates_the_candidate_cache():
    x = torch.randn(2, 4)
    dispatch.resolve("silu_and_mul", (x,), {})  # fills the cache
    impls = dispatch._REGISTRY["silu_and_mul"]
    before = impls.get("native")  # restored whole, with its supports() (other tests rely on it)
    try:
        dispatch.register("silu_and_mul", "native", supports=lambda *a, **k: True)(lambda t: "new")
        assert dispatch.resolve("silu_and_mul", (x,), {})(x) == "new"
    finally:
        if before is None:
            impls.pop("native")
        else:
            impls["native"] = before
        dispatch._candidates.cache_clear()
