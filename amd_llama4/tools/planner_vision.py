"""The planner's image side: image tokens per prompt and the vision encoder's memory and roofline.

Per image, at most `max_patches` tiles plus a global thumbnail are encoded; each tile becomes
`tokens_per_tile` `<|patch|>` tokens (plus separators and markers: prompt.max_image_tokens). The
tower (vision_model + multi_modal_projector) is replicated on every GPU and stays bf16 (never
quantised); its workspace is one encoder layer's activations over all tiles of one prompt's images,
attention flash-style. The encoder cache holds a prompt's projected features until they are prefilled."""
from __future__ import annotations

import json
import os

import torch

from amd_llama4.config import Llama4Config
from amd_llama4.multimodal.prompt import max_image_tokens

DEFAULT_MAX_PATCHES = 16  # the released preprocessor_config.json (Scout and Maverick)
BF16 = 2


def max_patches_of(model: str) -> int:
    """max_patches from a checkpoint folder's preprocessor_config.json; the released value for presets."""
    path = os.path.join(model, "preprocessor_config.json")
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            return int(json.load(f).get("max_patches", DEFAULT_MAX_PATCHES))
    return DEFAULT_MAX_PATCHES


def vision_params(cfg: Llama4Config) -> int:
    """Parameters of vision_model + multi_modal_projector, counted on the meta device (exact)."""
    from amd_llama4.model.multimodal import MultiModalProjector
    from amd_llama4.model.vision import Llama4VisionModel

    v = cfg.vision_config
    with torch.device("meta"):
        modules = (Llama4VisionModel(v), MultiModalProjector(v.vision_output_dim, cfg.hidden_size))
    return sum(p.numel() for m in modules for p in m.parameters())


def plan_vision(cfg: Llama4Config, model: str, images_per_prompt: int, concurrency: int, peak_flops: float,
                hbm_bytes_s: float) -> dict:
    """Image tokens, encoder weights/workspace/cache bytes per GPU and an encoder roofline (one GPU:
    the tower is replicated, each GPU encodes on its own)."""
    v = cfg.vision_config
    per_tile, patches = v.tokens_per_tile, max_patches_of(model)
    tiles = images_per_prompt * (patches + 1)
    seq = v.patches_per_side ** 2 + 1  # patches + class token, per tile
    params = vision_params(cfg)
    weights = params * BF16
    # one encoder layer live at a time: x, q, k, v, attention out, residual (6 H) + the MLP's I
    workspace = tiles * seq * (6 * v.hidden_size + v.intermediate_size) * BF16
    features_per_image = (patches + 1) * per_tile * cfg.hidden_size * BF16
    # FLOPs per tile: 2 x params per patch token (projector only on the pixel-shuffled tokens, small)
    # plus attention (QK^T and PV over seq x seq, every layer)
    tile_flops = 2 * params * seq + 4 * seq * seq * v.hidden_size * v.num_hidden_layers
    tile_s = max(tile_flops / peak_flops, weights / hbm_bytes_s / max(tiles, 1))
    return {
        "max_patches": patches,
        "tokens_per_tile": per_tile,
        "image_patch_tokens_max": (patches + 1) * per_tile,  # <|patch|> tokens of one image at most
        "image_tokens_max": max_image_tokens(patches, per_tile),  # with separators and markers
        "images_per_prompt": images_per_prompt,
        "image_tokens_per_prompt_max": images_per_prompt * max_image_tokens(patches, per_tile),
        "vision_params": params,
        "vision_weights_bytes_per_gpu": weights,
        "encoder_workspace_bytes_per_gpu": workspace,
        "encoder_cache_bytes_per_gpu": concurrency * images_per_prompt * features_per_image,
        "encoder_tile_s": tile_s,
        "encoder_images_per_s_max_tiles": 1.0 / (tile_s * (patches + 1)),
    }


def format_vision(r: dict) -> list[str]:
    gb = lambda b: f"{b / 1e9:,.2f} GB"  # noqa: E731
    return [
        f"  images              {r['images_per_prompt']} per prompt, up to {r['image_tokens_max']:,} tokens each "
        f"(({r['max_patches']} tiles + thumbnail) x {r['tokens_per_tile']} + separators) -> "
        f"{r['image_tokens_per_prompt_max']:,} of the context",
        f"  vision encoder      {r['vision_params'] / 1e9:,.2f} B params, {gb(r['vision_weights_bytes_per_gpu'])} bf16 "
        f"per GPU (replicated); workspace {gb(r['encoder_workspace_bytes_per_gpu'])}, feature cache "
        f"{gb(r['encoder_cache_bytes_per_gpu'])} per GPU",
        f"  encoder (roofline)  {r['encoder_images_per_s_max_tiles']:,.1f} images/s per GPU at "
        f"{r['max_patches'] + 1} tiles each",
    ]
