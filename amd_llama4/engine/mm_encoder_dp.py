"""mm_encoder_tp_mode="data" (vLLM's option): under tensor parallelism each rank runs its replicated
vision tower on a disjoint share of the step's missing images (image i on rank i % world), then one
all_gather over the process group gives every rank every image's features, so every rank's encoder
cache stays the same as in "weights" mode (where each rank encodes every image itself).

all_gather needs equal shapes: each rank pads its share's rows [rows_r, H] to the largest share's
row count, which every rank computes alone (all know every image's patch-token count), and the
gathered blocks are cut back and split per image. The tower works per tile, so an image's features
do not depend on which images share its call.
"""
from __future__ import annotations

from collections import deque
from typing import Any, Sequence

import torch

from amd_llama4.engine.mm_inputs import ImageItem, encode_images


def shares(num_images: int, world: int) -> list[list[int]]:
    """-> per rank the indices of the images it encodes: image i on rank i % world."""
    if world < 1:
        raise ValueError(f"mm encoder data parallel: world size {world} must be >= 1")
    return [list(range(r, num_images, world)) for r in range(world)]


def share_rows(tokens: Sequence[int], world: int) -> list[int]:
    """tokens: feature rows per image -> rows per rank's share."""
    return [sum(tokens[i] for i in idx) for idx in shares(len(tokens), world)]


def pad_rows(x: torch.Tensor, rows: int) -> torch.Tensor:
    """x: [n, H] -> [rows, H], zero rows appended (n <= rows)."""
    if x.shape[0] > rows:
        raise ValueError(f"mm encoder data parallel: {x.shape[0]} feature rows exceed the padded size {rows}")
    if x.shape[0] == rows:
        return x.contiguous()
    return torch.cat([x, x.new_zeros(rows - x.shape[0], x.shape[1])])


def unshare(gathered: Sequence[torch.Tensor], tokens: Sequence[int]) -> list[torch.Tensor]:
    """gathered: per rank its padded share [max rows, H]; tokens: rows per image (all images, in
    order) -> per image its features [tokens, H], in the original order."""
    world = len(gathered)
    out: list[torch.Tensor | None] = [None] * len(tokens)
    for r, idx in enumerate(shares(len(tokens), world)):
        n = [tokens[i] for i in idx]
        if sum(n) > gathered[r].shape[0]:
            raise RuntimeError(f"mm encoder data parallel: rank {r} sent {gathered[r].shape[0]} rows, its share "
                               f"needs {sum(n)}")
        for i, f in zip(idx, gathered[r][:sum(n)].split(n)):
            out[i] = f
    return out  # type: ignore[return-value]


class DataParallelEncoder:
    """An `encode` hook for EncoderCache.ensure (engine/mm_inputs.py). Every rank must call it
    with the same images in the same order (it joins one collective per call). group: the
    torch.distributed process group (None: the default one; gloo on CPU, NCCL/RCCL on GPU)."""

    def __init__(self, rank: int, world: int, group: Any = None):
        if not 0 <= rank < world:
            raise ValueError(f"mm encoder data parallel: rank {rank} not in [0, world={world})")
        self.rank, self.world, self.group = rank, world, group
        self.calls: deque[int] = deque(maxlen=256)  # images per recent call (every rank the same)
        self.num_local = 0  # images this rank ran through its tower

    def __call__(self, images: Sequence[ImageItem], model) -> list[torch.Tensor]:
        if self.world == 1:
            self.calls.append(len(images))
            self.num_local += len(images)
            return encode_images(images, model)
        import torch.distributed as dist

        tokens = [im.num_tokens for im in images]
        rows = max(share_rows(tokens, self.world))
        mine = [images[i] for i in shares(len(images), self.world)[self.rank]]
        self.calls.append(len(images))
        self.num_local += len(mine)
        ref = model.model.embed_tokens.weight  # image_features' dtype and device
        local = (model.image_features(torch.cat([im.pixel_values for im in mine])) if mine
                 else ref.new_zeros(0, model.config.hidden_size))  # [rows_r, H]
        buf = pad_rows(local, rows)  # [rows, H]
        gathered = [torch.empty_like(buf) for _ in range(self.world)]
        dist.all_gather(gathered, buf, group=self.group)
        return unshare(gathered, tokens)


__all__ = ["DataParallelEncoder", "pad_rows", "share_rows", "shares", "unshare"]
