"""Images in the engine: per-request image state and the encoder cache.

A request's images are processed once, at add_request (Llama4ImageProcessor: tiles of pixels), and
each `<|image|>` of its prompt is expanded into Llama4Processor's tile/patch tokens. Their
`<|patch|>` positions are known by construction, so a prefill piece [start, start + n) of any size
(chunked prefill may cut an image's tokens anywhere, a recompute after preemption starts again at
0) gets exactly the feature rows of the patch tokens it holds.

The vision tower runs once per distinct image (hash of its decoded pixels): features live in the
EncoderCache while any unfinished request holds the image, so a later piece, a recompute after
preemption, another sample of the same request or another request with the same image reuses them.
Images missing in one step are encoded together (one tower call over all their tiles); under
tensor parallelism with mm_encoder_tp_mode="data" an `encode` hook (engine/mm_encoder_dp.py) splits
them across the ranks instead.
"""
from __future__ import annotations

import hashlib
import os
from bisect import bisect_left
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from amd_llama4.multimodal.image_processor import ImageProcessorConfig, Llama4ImageProcessor
from amd_llama4.multimodal.prompt import IMAGE, ImageTokenIds, image_token_ids, tokens_per_tile


def image_hash(image: Any) -> bytes:
    """Key of one input image: its decoded pixels, size and mode (PIL), or array bytes and shape."""
    h = hashlib.blake2b(digest_size=16)
    if hasattr(image, "tobytes") and hasattr(image, "mode") and hasattr(image, "size"):  # PIL
        h.update(f"PIL:{image.mode}:{image.size}".encode())
        h.update(image.tobytes())
    else:
        arr = np.ascontiguousarray(image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else image)
        h.update(f"array:{arr.dtype}:{arr.shape}".encode())
        h.update(arr.tobytes())
    return h.digest()


@dataclass
class ImageItem:
    """One image of a prompt."""

    hash: bytes
    pixel_values: torch.Tensor  # [tiles, 3, S, S], the processor's order (tiles, then the thumbnail)
    aspect_ratio: tuple[int, int]  # tile grid rows x cols
    start: int  # prompt position of its <|image_start|>
    end: int  # one past its <|image_end|>
    patch_positions: list[int]  # prompt positions of its <|patch|> tokens; feature row r -> [r]

    @property
    def num_tokens(self) -> int:
        return len(self.patch_positions)


@dataclass
class MMRequest:
    """The images of one request (shared by all its samples: the prompt is the same)."""

    images: list[ImageItem]

    @property
    def hashes(self) -> list[bytes]:
        return [im.hash for im in self.images]

    def block_extra_keys(self, block_size: int) -> dict[int, bytes]:
        """Prefix-cache extra key per block index holding any token of an image: the hashes of the
        images it touches. Later blocks inherit them through the chained block keys."""
        keys: dict[int, bytes] = {}
        for im in self.images:
            for j in range(im.start // block_size, (im.end - 1) // block_size + 1):
                keys[j] = keys.get(j, b"") + im.hash
        return keys

    def overlapping(self, start: int, n: int) -> list[ImageItem]:
        """Images with patch tokens in positions [start, start + n)."""
        return [im for im in self.images if im.patch_positions and im.patch_positions[0] < start + n
                and im.patch_positions[-1] >= start]

    def piece(self, start: int, n: int, features: Callable[[bytes], torch.Tensor]
              ) -> tuple[list[int], torch.Tensor] | None:
        """For the piece of positions [start, start + n): (rows within the piece, their feature rows
        [k, H]), from `features(hash)` -> [tokens, H]; None when the piece holds no patch token."""
        rows, feats = [], []
        for im in self.overlapping(start, n):
            lo = bisect_left(im.patch_positions, start)
            hi = bisect_left(im.patch_positions, start + n)
            rows += [p - start for p in im.patch_positions[lo:hi]]
            feats.append(features(im.hash)[lo:hi])
        if not rows:
            return None
        return rows, torch.cat(feats) if len(feats) > 1 else feats[0]


def encode_images(images: Sequence[ImageItem], model) -> list[torch.Tensor]:
    """One tower call over all the images' tiles -> per image its feature rows [tokens, H]."""
    if not images:
        return []
    feats = model.image_features(torch.cat([im.pixel_values for im in images]))  # [sum tokens, H]
    return list(feats.split([im.num_tokens for im in images]))


# (images to encode, model) -> per image its features [tokens, H]
Encode = Callable[[Sequence[ImageItem], Any], list[torch.Tensor]]


@dataclass
class EncoderCache:
    """Image hash -> projected vision features [tokens, H] on the model's device, held while any
    owner (a request, or a worker's sequence) references the image."""

    features: dict[bytes, torch.Tensor] = field(default_factory=dict)
    refs: dict[bytes, int] = field(default_factory=dict)
    num_encoded: int = 0  # images run through the tower (tests: once per distinct image)
    num_encoder_calls: int = 0

    def acquire(self, hashes: Sequence[bytes]) -> None:
        for h in hashes:
            self.refs[h] = self.refs.get(h, 0) + 1

    def release(self, hashes: Sequence[bytes]) -> None:
        for h in hashes:
            left = self.refs.get(h, 0) - 1
            if left > 0:
                self.refs[h] = left
            else:
                self.refs.pop(h, None)
                self.features.pop(h, None)

    def ensure(self, images: Sequence[ImageItem], model, encode: "Encode | None" = None) -> None:
        """Encode the images not cached yet: `encode(todo, model)` (default encode_images: one tower
        call over all their tiles). Every tensor-parallel rank computes the same todo list, in the
        same order (same step message, same cache), which a distributed `encode` relies on."""
        todo, seen = [], set()
        for im in images:
            if im.hash not in self.features and im.hash not in seen:
                todo.append(im)
                seen.add(im.hash)
        if not todo:
            return
        feats = (encode or encode_images)(todo, model)
        if len(feats) != len(todo):
            raise RuntimeError(f"encoder: {len(feats)} feature tensors for {len(todo)} images")
        for im, f in zip(todo, feats):
            if f.shape[0] != im.num_tokens:
                raise RuntimeError(f"encoder: image gave {f.shape[0]} feature rows for {im.num_tokens} patch tokens")
            self.features[im.hash] = f
        self.num_encoded += len(todo)
        self.num_encoder_calls += 1

    def __getitem__(self, h: bytes) -> torch.Tensor:
        return self.features[h]

    def __len__(self) -> int:
        return len(self.features)


def step_image_features(pieces: Sequence[tuple[MMRequest | None, int, int]], cache: EncoderCache, model,
                        encode: Encode | None = None) -> list[tuple[list[int], torch.Tensor] | None]:
    """pieces: (request images or None, start, n) per step item -> per item (rows within the
    item, feature rows) or None. Encodes the images this step needs and the cache lacks, with
    `encode` (EncoderCache.ensure)."""
    needed = [im for mm, s, n in pieces if mm is not None for im in mm.overlapping(s, n)]
    if not needed:
        return [None] * len(pieces)
    cache.ensure(needed, model, encode)
    return [mm.piece(s, n, cache.__getitem__) if mm is not None else None for mm, s, n in pieces]


def processor_folder(model: str, tokenizer: str | None = None) -> Path | None:
    """Where preprocessor_config.json is: the checkpoint folder (or the tokenizer's), or the tiny
    presets' asset folder; None when there is none."""
    from amd_llama4.config import is_preset
    from amd_llama4.engine.tokenizer import tiny_tokenizer_dir

    for src in (model, tokenizer):
        if src and os.path.isdir(src) and (Path(src) / "preprocessor_config.json").is_file():
            return Path(src)
    if is_preset(model) and model.startswith("tiny"):
        return tiny_tokenizer_dir()
    return None


class MultiModalProcessor:
    """Engine side of images: PIL images + prompt ids -> expanded ids and their MMRequest."""

    def __init__(self, token_ids: ImageTokenIds, processor: Llama4ImageProcessor, per_tile: int):
        self.ids, self.processor, self.per_tile = token_ids, processor, per_tile

    @classmethod
    def for_model(cls, cfg, tokenizer, model: str, tokenizer_source: str | None = None) -> "MultiModalProcessor":
        """cfg: the model's Llama4Config (with vision_config); tokenizer: the engine's Tokenizer."""
        if tokenizer is None:
            raise ValueError(f"model {model!r}: images need the model's tokenizer.json (its image tokens)")
        folder = processor_folder(model, tokenizer_source)
        if folder is None:
            raise ValueError(f"model {model!r}: no preprocessor_config.json in the checkpoint folder: copy it from "
                             "the released model to take images")
        proc = Llama4ImageProcessor.from_pretrained(folder)
        v = cfg.vision_config
        if proc.config.tile_size != v.image_size:
            raise ValueError(f"{folder / 'preprocessor_config.json'}: size {proc.config.tile_size} differs from "
                             f"config.json vision_config.image_size {v.image_size}")
        ids = ImageTokenIds.from_tokenizer(tokenizer)
        if ids.patch != cfg.image_token_index:
            raise ValueError(f"tokenizer's <|patch|> id {ids.patch} differs from config.json image_token_index "
                             f"{cfg.image_token_index}: the tokenizer does not belong to this checkpoint")
        return cls(ids, proc, tokens_per_tile(v.image_size, v.patch_size, v.pixel_shuffle_ratio))

    def process(self, prompt_ids: Sequence[int], images: Sequence[Any]) -> tuple[list[int], MMRequest]:
        """The i-th `<|image|>` id of prompt_ids becomes image i's expansion. Raises ValueError on a
        count mismatch."""
        n = sum(1 for t in prompt_ids if t == self.ids.image)
        if n != len(images):
            raise ValueError(f"prompt has {n} {IMAGE} token(s) (id {self.ids.image}) but {len(images)} image(s) were "
                             f"given: put one {IMAGE} (one image content part) per image")
        if not images:
            return list(prompt_ids), MMRequest([])
        hashes = [image_hash(im) for im in images]
        processed = [self.processor.process_one(im) for im in images]  # (tiles [t, 3, S, S], (rows, cols))
        out: list[int] = []
        items: list[ImageItem] = []
        for t in prompt_ids:
            if t != self.ids.image:
                out.append(int(t))
                continue
            k = len(items)
            tiles, grid = processed[k]
            exp = image_token_ids(self.ids, *grid, self.per_tile)
            start = len(out)
            patches = [start + j for j, e in enumerate(exp) if e == self.ids.patch]
            out += exp
            items.append(ImageItem(hashes[k], tiles, grid, start, len(out), patches))
            if len(patches) != tiles.shape[0] * self.per_tile:
                raise RuntimeError(f"image {k}: {len(patches)} patch tokens for {tiles.shape[0]} tiles")
        return out, MMRequest(items)


def images_of(multi_modal_data: dict | None) -> list[Any]:
    """vLLM's multi_modal_data {"image": img | [imgs]} -> the list of images."""
    if not multi_modal_data:
        return []
    if not isinstance(multi_modal_data, dict):
        raise ValueError(f"multi_modal_data must be a dict like {{'image': image or [images]}}, got "
                         f"{type(multi_modal_data).__name__}")
    unknown = sorted(set(multi_modal_data) - {"image"})
    if unknown:
        raise ValueError(f"multi_modal_data: modality {unknown} is not supported; Llama 4 takes 'image'")
    imgs = multi_modal_data.get("image")
    if imgs is None:
        return []
    return list(imgs) if isinstance(imgs, (list, tuple)) else [imgs]


__all__ = ["Encode", "EncoderCache", "ImageItem", "MMRequest", "MultiModalProcessor", "encode_images", "image_hash",
           "images_of",
           "processor_folder",
           "step_image_features"]
