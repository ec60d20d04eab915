"""Llama 4 as released: the text model plus the vision tower and its projector (HF
`Llama4ForConditionalGeneration`). Early fusion: each tile's image features replace the
`image_token_index` (`<|patch|>`) embeddings, in order, before the first decoder layer.

It is a `Llama4ForCausalLM` (same text parameter names `model.*`, `lm_head.*`, same
hidden_states / compute_logits), so the engine serves it unchanged; the vision parameters are
`vision_model.*` and `multi_modal_projector.*` as in a checkpoint. The vision tower is never
tensor-parallel sharded nor FP8-quantised (loader.py), as in peers.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from amd_llama4.config import Llama4Config
from amd_llama4.model.llama4 import KVCache, Linear, Llama4ForCausalLM
from amd_llama4.model.vision import Llama4VisionModel
from amd_llama4.parallel.tp import SINGLE, Parallel

# Parameter-name prefixes of the vision side (never sharded, never quantised).
VISION_PREFIXES = ("vision_model.", "multi_modal_projector.")


def is_vision_param(name: str) -> bool:
    return name.startswith(VISION_PREFIXES)


class MultiModalProjector(nn.Module):
    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.linear_1 = Linear(in_dim, out_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_1(x)


class Llama4ForConditionalGeneration(Llama4ForCausalLM):
    def __init__(self, cfg: Llama4Config, par: Parallel = SINGLE):
        if cfg.vision_config is None:
            raise ValueError("Llama4ForConditionalGeneration: config.vision_config is None (a text-only config; "
                             "use Llama4ForCausalLM)")
        if not 0 <= cfg.image_token_index < cfg.vocab_size:  # checked here, not in the config: a text-only
            # load of a checkpoint with a stub vision_config never uses it
            raise ValueError(f"Llama4Config.image_token_index: {cfg.image_token_index} not in "
                             f"[0, vocab_size={cfg.vocab_size})")
        super().__init__(cfg, par)  # text first: init_random gives the text model the same weights
        v = cfg.vision_config
        self.vision_model = Llama4VisionModel(v)
        self.multi_modal_projector = MultiModalProjector(v.vision_output_dim, cfg.hidden_size)

    @property
    def tokens_per_tile(self) -> int:
        return self.config.vision_config.tokens_per_tile

    @torch.no_grad()
    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """pixel_values: [num_tiles, 3, S, S] -> [num_tiles * tokens_per_tile, hidden_size], in the
        text model's dtype: the rows that replace the `<|patch|>` embeddings, tile by tile."""
        feats = self.vision_model(pixel_values.to(self.model.embed_tokens.weight.device))  # [N, T, D_v]
        out = self.multi_modal_projector(feats.reshape(-1, feats.shape[-1]))
        return out.to(self.model.embed_tokens.weight.dtype)

    def embed(self, input_ids: torch.Tensor, image_features: torch.Tensor | None = None) -> torch.Tensor:
        """input_ids: [B, S] -> embeddings [B, S, H], with `image_features` [n, H] written, in row-major
        order, at the n positions whose id is image_token_index (HF's masked_scatter). A prefill piece
        passes the features of exactly the image tokens it holds."""
        x = self.model.embed_tokens(input_ids)  # [B, S, H]
        if image_features is None:
            return x
        mask = input_ids == self.config.image_token_index
        n = image_features.shape[0]
        if image_features.dim() != 2 or image_features.shape[1] != x.shape[-1]:
            raise ValueError(f"image_features: shape {tuple(image_features.shape)}, expected [num_image_tokens, "
                             f"hidden_size={x.shape[-1]}]")
        count = int(mask.sum())  # a host sync, once per prefill piece with images
        if count != n:
            raise ValueError(f"input_ids hold {count} image tokens (id {self.config.image_token_index}, "
                             f"<|patch|>) but image_features has {n} rows ({n / self.tokens_per_tile:g} tiles "
                             f"of {self.tokens_per_tile} tokens)")
        x[mask] = image_features.to(x.dtype)
        return x

    @torch.no_grad()
    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor | None = None,
                cache: KVCache | None = None, *, pixel_values: torch.Tensor | None = None) -> torch.Tensor:
        """input_ids: [B, S]; pixel_values: [num_tiles, 3, S_img, S_img], all images of the batch in
        prompt order (each image's tiles, then its global thumbnail when it has more than one tile)
        -> fp32 logits [B, S, V]. Without pixel_values: text only (no image token allowed)."""
        feats = self.image_features(pixel_values) if pixel_values is not None else None
        if feats is None and bool((input_ids == self.config.image_token_index).any()):
            raise ValueError(f"input_ids hold image tokens (id {self.config.image_token_index}) but no "
                             "pixel_values were given")
        embeds = self.embed(input_ids, feats) if feats is not None else None
        return self.compute_logits(self.hidden_states(input_ids, positions, cache, inputs_embeds=embeds))

    def init_random(self, seed: int = 0, std: float = 0.02) -> "Llama4ForConditionalGeneration":
        """The text model as Llama4ForCausalLM.init_random(seed); the tower from its own stream:
        normal(0, std) weights, LayerNorms at weight 1 / bias 0."""
        super().init_random(seed, std)
        g = torch.Generator().manual_seed(seed + 1)
        with torch.no_grad():
            for name, p in self.named_parameters():
                if not is_vision_param(name):
                    continue
                if "layernorm" in name:
                    p.fill_(1.0 if name.endswith(".weight") else 0.0)
                else:
                    p.copy_(torch.randn(p.shape, generator=g) * std)
        return self
