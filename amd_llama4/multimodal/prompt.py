"""Prompt expansion for Llama 4 images, as transformers' `Llama4Processor` does it.

Each `<|image|>` placeholder in the prompt (the chat template writes one per image content part)
becomes, for an image cut into rows x cols tiles:

    <|image_start|>
      (only when rows x cols > 1) per tile row: per tile: <|patch|> x N, <|tile_x_separator|> between
      tiles; <|tile_y_separator|> after each row
    <|image|> <|patch|> x N            (the thumbnail, or the single tile)
    <|image_end|>

N = tokens per tile = (tile // patch)^2 / (1 / pixel_shuffle_ratio^2). The vision features replace
the `<|patch|>` positions, in order. Token ids come from the tokenizer, never from constants.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

IMAGE = "<|image|>"
PATCH = "<|patch|>"
IMAGE_START = "<|image_start|>"
IMAGE_END = "<|image_end|>"
TILE_X_SEPARATOR = "<|tile_x_separator|>"
TILE_Y_SEPARATOR = "<|tile_y_separator|>"
IMAGE_TOKENS = (IMAGE_START, IMAGE_END, IMAGE, PATCH, TILE_X_SEPARATOR, TILE_Y_SEPARATOR)


def tokens_per_tile(tile_size: int, patch_size: int, pixel_shuffle_ratio: float) -> int:
    """`<|patch|>` tokens one tile costs: its patches over the pixel-shuffle downsampling."""
    downsample = int(round(1.0 / pixel_shuffle_ratio ** 2))
    return (tile_size // patch_size) * (tile_size // patch_size) // downsample


def max_image_tokens(max_patches: int, per_tile: int) -> int:
    """Upper bound of one image's expanded length: max_patches tiles + thumbnail, the separators
    (at most max_patches of them: one after each tile but the grid's last) and 3 markers."""
    return (max_patches + 1) * per_tile + max_patches + 3


def image_text(rows: int, cols: int, per_tile: int) -> str:
    """The expansion of one image with a rows x cols tile grid."""
    parts = [IMAGE_START]
    if rows * cols > 1:
        for _ in range(rows):
            for c in range(cols):
                parts.append(PATCH * per_tile)
                if c < cols - 1:
                    parts.append(TILE_X_SEPARATOR)
            parts.append(TILE_Y_SEPARATOR)
    parts += [IMAGE, PATCH * per_tile, IMAGE_END]
    return "".join(parts)


@dataclass(frozen=True)
class ImageTokenIds:
    """The ids of the image tokens in one tokenizer."""

    image: int
    patch: int
    image_start: int
    image_end: int
    tile_x_separator: int
    tile_y_separator: int

    @classmethod
    def from_tokenizer(cls, tokenizer) -> "ImageTokenIds":
        ids = {s: tokenizer.token_to_id(s) for s in IMAGE_TOKENS}
        missing = [s for s, i in ids.items() if i is None]
        if missing:
            raise ValueError(f"tokenizer {getattr(tokenizer, 'source', '')}: no id for {missing}: a multimodal "
                             "Llama 4 needs its released tokenizer (tokenizer.json with the image special tokens)")
        return cls(ids[IMAGE], ids[PATCH], ids[IMAGE_START], ids[IMAGE_END], ids[TILE_X_SEPARATOR],
                   ids[TILE_Y_SEPARATOR])


def image_token_ids(ids: ImageTokenIds, rows: int, cols: int, per_tile: int) -> list[int]:
    """image_text(rows, cols, per_tile) as token ids (what encoding that text gives)."""
    out = [ids.image_start]
    if rows * cols > 1:
        for _ in range(rows):
            for c in range(cols):
                out += [ids.patch] * per_tile
                if c < cols - 1:
                    out.append(ids.tile_x_separator)
            out.append(ids.tile_y_separator)
    out += [ids.image, *[ids.patch] * per_tile, ids.image_end]
    return out


def expand_prompt(text: str, aspect_ratios: Sequence[tuple[int, int]], per_tile: int) -> str:
    """Replace the i-th `<|image|>` of `text` by the expansion of image i. The counts must match."""
    pieces = text.split(IMAGE)
    if len(pieces) - 1 != len(aspect_ratios):
        raise ValueError(f"prompt has {len(pieces) - 1} {IMAGE} placeholder(s) but {len(aspect_ratios)} "
                         f"image(s) were given: put one {IMAGE} (or one image content part) per image")
    out = [pieces[0]]
    for (rows, cols), rest in zip(aspect_ratios, pieces[1:]):
        out += [image_text(rows, cols, per_tile), rest]
    return "".join(out)


def expand_token_ids(prompt_ids: Sequence[int], ids: ImageTokenIds, aspect_ratios: Sequence[tuple[int, int]],
                     per_tile: int) -> list[int]:
    """Token-level expand_prompt: the i-th `<|image|>` id becomes image i's expansion (for prompts
    given as ids)."""
    n = sum(1 for t in prompt_ids if t == ids.image)
    if n != len(aspect_ratios):
        raise ValueError(f"prompt has {n} {IMAGE} token(s) (id {ids.image}) but {len(aspect_ratios)} image(s) "
                         "were given")
    out: list[int] = []
    it = iter(aspect_ratios)
    for t in prompt_ids:
        if t == ids.image:
            out += image_token_ids(ids, *next(it), per_tile)
        else:
            out.append(int(t))
    return out
