"""A fake vision model and images for the mm_encoder_tp_mode="data" tests, and the body each gloo
process of tests/parallel/test_multimodal_tp.py runs (a module of its own: spawned processes import
it, not the test file with its heavy imports)."""
from __future__ import annotations

import torch

from amd_llama4.engine.mm_inputs import ImageItem

PER_TILE, HIDDEN, SIDE = 3, 5, 4


class FakeVisionModel:
    """image_features: every tile -> PER_TILE rows [PER_TILE, HIDDEN], a fixed linear map of its pixels
    (so a row depends on its tile only, as with the real tower); counts the tiles it saw."""

    def __init__(self, dtype: torch.dtype = torch.float32):
        g = torch.Generator().manual_seed(0)
        self.w = torch.randn(3 * SIDE * SIDE, PER_TILE * HIDDEN, generator=g).to(dtype)
        self.model = torch.nn.Module()
        self.model.embed_tokens = torch.nn.Embedding(7, HIDDEN, dtype=dtype)
        self.config = type("Cfg", (), {"hidden_size": HIDDEN})()
        self.tiles_seen = 0

    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        self.tiles_seen += pixel_values.shape[0]
        t = pixel_values.shape[0]
        return (pixel_values.reshape(t, -1).to(self.w.dtype) @ self.w).reshape(t * PER_TILE, HIDDEN)


def images(tiles: list[int], seed: int = 0) -> list[ImageItem]:
    """One ImageItem per entry: that many tiles of random pixels."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for k, t in enumerate(tiles):
        pv = torch.randn(t, 3, SIDE, SIDE, generator=g)
        out.append(ImageItem(bytes([seed, k]), pv, (t, 1), 0, 0, list(range(t * PER_TILE))))
    return out


# (tile counts of one step's images, dtype): odd count (uneven shares), one image (rank 1 idle),
# more images than ranks with a large one last, bf16 (gloo must carry it)
CASES = [([1, 2, 5], torch.float32), ([3], torch.float32), ([2, 1, 1, 4, 1], torch.float32),
         ([5, 1, 2], torch.bfloat16)]


def gloo_rank(rank: int, world: int, init_method: str, out_dir: str) -> None:
    """One rank: each CASE through DataParallelEncoder; saves per case the features it ended with
    and the tiles its own tower encoded."""
    import torch.distributed as dist

    from amd_llama4.engine.mm_encoder_dp import DataParallelEncoder

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init_method, rank=rank, world_size=world)
    try:
        enc = DataParallelEncoder(rank, world)
        results = []
        for seed, (tiles, dtype) in enumerate(CASES):
            model = FakeVisionModel(dtype)
            feats = enc(images(tiles, seed), model)
            results.append({"feats": feats, "tiles_seen": model.tiles_seen})
        torch.save({"results": results, "calls": list(enc.calls), "num_local": enc.num_local}, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()
