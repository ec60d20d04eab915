"""The GPU path's MoE launchers issue no host sync: moe_align_block_size (Triton kernel, torch
reference) and the Triton fused MoE (bf16 and FP8), run in the interpreter on CPU under
tests/no_sync.py's detector (plus torch.cuda.set_sync_debug_mode("error") where a GPU exists)."""
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent / "ops"))
from triton_env import require_triton  # noqa: E402

DEV = require_triton()

from amd_llama4.ops.moe import fused_moe, moe_align_block_size  # noqa: E402
from amd_llama4.ops.moe_fp8 import fused_moe_fp8, quantize_moe_weights  # noqa: E402
from tests.no_sync import HostSyncError, no_host_sync  # noqa: E402


def _routing(T, E, k, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.stack([torch.randperm(E, generator=g)[:k] for _ in range(T)]).to(torch.int32)
    return torch.rand(T, k, generator=g), ids


@pytest.mark.parametrize("bad", ["item", "int", "nonzero", "mask", "repeat", "tolist", "bincount", "unique"])
def test_detector_catches_syncs(bad):
    """The detector must fail on each kind of sync, or the tests below prove nothing."""
    t = torch.tensor([0, 2, 1, 2], device=DEV)
    calls = {"item": lambda: t.sum().item(), "int": lambda: int(t.max()), "nonzero": lambda: t.nonzero(),
             "mask": lambda: t[t > 0], "repeat": lambda: torch.repeat_interleave(t),
             "tolist": lambda: t.tolist(), "bincount": lambda: torch.bincount(t), "unique": lambda: torch.unique(t)}
    with pytest.raises(HostSyncError):
        with no_host_sync():
            calls[bad]()
    assert t.tolist() == [0, 2, 1, 2]  # everything restored afterwards


def test_detector_allows_sized_ops():
    t = torch.tensor([0, 2, 1, 2], device=DEV)
    with no_host_sync():
        torch.repeat_interleave(t, output_size=5)
        torch.argsort(t, stable=True)
        torch.searchsorted(t.sort().values, t)


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("T,k,E,block", [(5, 1, 8, 16), (9, 2, 5, 4)])
def test_align_no_sync(backend, T, k, E, block):
    _, ids = _routing(T, E, k)
    ids = ids.to(DEV)
    with no_host_sync():
        got = moe_align_block_size(ids, E, block, backend=backend)
    want = moe_align_block_size.reference(ids, E, block)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_old_host_side_align_is_caught():
    """What the launcher did before (a host int for the padded size) is flagged."""
    _, ids = _routing(4, 3, 1)
    with pytest.raises(HostSyncError):
        with no_host_sync():
            counts = torch.zeros(3, dtype=torch.long, device=DEV).scatter_add_(
                0, ids.reshape(-1).long().to(DEV), torch.ones(4, dtype=torch.long, device=DEV))
            int(((counts + 3) // 4 * 4).sum())


@pytest.mark.parametrize("T,k", [(3, 1), (6, 2)])
def test_triton_fused_moe_no_sync(T, k):
    E, H, inter = 6, 32, 24
    g = torch.Generator().manual_seed(1)
    x = torch.randn(T, H, generator=g).to(torch.bfloat16)
    w1 = (torch.randn(E, H, 2 * inter, generator=g) / H ** 0.5).to(torch.bfloat16)
    w2 = (torch.randn(E, inter, H, generator=g) / inter ** 0.5).to(torch.bfloat16)
    tw, ids = _routing(T, E, k)
    args = [t.to(DEV) for t in (x, w1, w2, tw, ids)]
    with no_host_sync():
        got = fused_moe(*args, backend="triton")
    torch.testing.assert_close(got.float(), fused_moe.reference(*args).float(), atol=3e-2, rtol=3e-2)


def test_triton_fused_moe_fp8_no_sync():
    T, k, E, H, inter, fmt = 5, 1, 4, 32, 16, "e4m3fn" if DEV == "cpu" else None
    if fmt is None:
        from amd_llama4 import platform
        fmt = platform.fp8_format()
    g = torch.Generator().manual_seed(2)
    x = torch.randn(T, H, generator=g).to(torch.bfloat16)
    w1q, w1s = quantize_moe_weights(torch.randn(E, H, 2 * inter, generator=g) / H ** 0.5, fmt)
    w2q, w2s = quantize_moe_weights(torch.randn(E, inter, H, generator=g) / inter ** 0.5, fmt)
    tw, ids = _routing(T, E, k)
    args = [t.to(DEV) for t in (x, w1q, w1s, w2q, w2s, tw, ids)]
    with no_host_sync():
        got = fused_moe_fp8(*args, fmt, backend="triton")
    torch.testing.assert_close(got.float(), fused_moe_fp8.reference(*args, fmt).float(), atol=6e-2, rtol=6e-2)
