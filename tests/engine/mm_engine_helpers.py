"""A random multimodal checkpoint saved by transformers with its own tokenizer, chat template and
preprocessor_config.json, and a greedy transformers reference loop over it (no KV cache: the full
sequence every step, as transformers' forward computes it)."""
from __future__ import annotations

import shutil

import torch

from amd_llama4.config import Llama4Config
from amd_llama4.engine.tokenizer import tiny_tokenizer_dir
from amd_llama4.multimodal import Llama4ImageProcessor
from tests.model import multimodal_reference as ref
from tests.multimodal.hf_image_reference import make_image  # noqa: F401  (re-exported for the tests)

# The tiny tokenizer's image token ids (assets/tiny_tokenizer): the checkpoint's config must agree.
TOK = dict(image_start=506, image_end=507, tile_x=508, tile_y=509, image=510, patch=511)
# multimodal_reference's layout ids -> this tokenizer's ids
_REMAP = {ref.BOI: TOK["image_start"], ref.EOI: TOK["image_end"], ref.IMAGE: TOK["image"],
          ref.TILE_X: TOK["tile_x"], ref.TILE_Y: TOK["tile_y"], ref.PATCH: TOK["patch"]}


def config() -> Llama4Config:
    return Llama4Config(**dict(ref.TEXT, vocab_size=512), vision_config=ref.VISION, image_token_index=TOK["patch"],
                        boi_token_index=TOK["image_start"], eoi_token_index=TOK["image_end"])


def save_checkpoint(folder, seed: int = 0):
    """-> the transformers model saved in `folder` with the tiny tokenizer + preprocessor config."""
    hf = ref.save_hf(config(), folder, seed=seed)
    src = tiny_tokenizer_dir()
    for name in ("tokenizer.json", "tokenizer_config.json", "preprocessor_config.json"):
        shutil.copy(src / name, folder / name)
    return hf


def expand(ids: list[int], grids: list[tuple[int, int]], per_tile: int) -> list[int]:
    """Each <|image|> id -> Llama4Processor's layout of that image (multimodal_reference's writing)."""
    out, it = [], iter(grids)
    for t in ids:
        out += [_REMAP[x] for x in ref.image_tokens(*next(it), per_tile)] if t == TOK["image"] else [t]
    return out


def reference_prompt(tokenizer, folder, prompt_ids: list[int], images: list) -> tuple[list[int], torch.Tensor | None]:
    """-> (expanded ids, pixel_values [tiles, 3, S, S] or None) as Llama4Processor gives them."""
    if not images:
        return list(prompt_ids), None
    proc = Llama4ImageProcessor.from_pretrained(folder)
    out = proc.preprocess(images)
    per_tile = config().vision_config.tokens_per_tile
    # bf16 pixels (the processor rescales in bf16) into the fp32 tower, as transformers casts them
    return expand(prompt_ids, [tuple(g) for g in out.aspect_ratios], per_tile), out.pixel_values.float()


@torch.no_grad()
def greedy(hf, ids: list[int], pixel_values: torch.Tensor | None, max_tokens: int) -> list[int]:
    ids = list(ids)
    out = []
    for _ in range(max_tokens):
        logits = ref.hf_logits(hf, torch.tensor([ids]), pixel_values)[0, -1]  # [V]
        tok = int(logits.argmax())
        out.append(tok)
        ids.append(tok)
    return out
