"""transformers' Llama4ForConditionalGeneration as the multimodal test reference: a small random
model from our config, saved with save_pretrained (what our loader reads), and its logits computed
as its forward would (5.24's forward fails building its output object): vision_model ->
multi_modal_projector -> masked_scatter at the image tokens -> language_model."""
from __future__ import annotations

import torch

from amd_llama4.config import Llama4Config

TEXT = dict(vocab_size=120, hidden_size=64, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
            head_dim=16, intermediate_size=48, intermediate_size_mlp=80, num_local_experts=4,
            num_experts_per_tok=1, interleave_moe_layer_step=1, use_qk_norm=True, attention_chunk_size=16,
            floor_scale=8, attn_scale=0.3, rope_theta=10000.0, max_position_embeddings=4096,
            rope_scaling=dict(factor=16.0, low_freq_factor=1.0, high_freq_factor=1.0,
                              original_max_position_embeddings=32),
            bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=False)
# 56 x 56 tiles of 4 x 4 patches of 14 -> 2 x 2 = 4 tokens per tile after the pixel shuffle
VISION = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
              vision_output_dim=48, projector_input_dim=48, projector_output_dim=48, image_size=56, patch_size=14,
              pixel_shuffle_ratio=0.5, rope_theta=10000.0)
# Special ids of this random vocabulary (the real ones come from the tokenizer)
BOI, EOI, IMAGE, TILE_X, TILE_Y, PATCH = 110, 111, 112, 113, 114, 119


def config(**vision_overrides) -> Llama4Config:
    return Llama4Config(**TEXT, vision_config=dict(VISION, **vision_overrides), image_token_index=PATCH,
                        boi_token_index=BOI, eoi_token_index=EOI)


def hf_model(cfg: Llama4Config, seed: int = 0):
    transformers = __import__("pytest").importorskip("transformers")
    hf_cfg = transformers.Llama4Config(**cfg.to_hf_multimodal_dict())
    for c in (hf_cfg, hf_cfg.text_config, hf_cfg.vision_config):
        c._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = transformers.Llama4ForConditionalGeneration(hf_cfg).eval()
    with torch.no_grad():  # non-trivial norms, biases and a tower loud enough to move the logits
        for name, p in model.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.2 * torch.randn_like(p))
            elif "experts" in name or name.endswith("bias"):
                p.copy_(0.05 * torch.randn_like(p))
            elif name.startswith(("vision_model.", "multi_modal_projector.")):
                p.copy_(0.15 * torch.randn_like(p))
    return model


def save_hf(cfg: Llama4Config, folder, seed: int = 0, **save_kwargs):
    model = hf_model(cfg, seed)
    model.save_pretrained(folder, **save_kwargs)
    return model


@torch.no_grad()
def hf_logits(hf, input_ids: torch.Tensor, pixel_values: torch.Tensor | None) -> torch.Tensor:
    embeds = hf.language_model.get_input_embeddings()(input_ids)
    if pixel_values is not None:
        feats = hf.vision_model(pixel_values).last_hidden_state
        flat = hf.multi_modal_projector(feats.view(-1, feats.size(-1)))
        mask = (input_ids == hf.config.image_token_index).unsqueeze(-1).expand_as(embeds)
        assert int(mask[..., 0].sum()) == flat.shape[0], "test prompt and tiles disagree"
        embeds = embeds.masked_scatter(mask, flat)
    return hf.language_model(inputs_embeds=embeds).logits.float()


def image_tokens(rows: int, cols: int, per_tile: int) -> list[int]:
    """One image's tokens in Llama4Processor's layout: <|image_start|>, the rows x cols tiles (each
    `per_tile` patch tokens, <|tile_x_separator|> between tiles, <|tile_y_separator|> after each row),
    then, when there is more than one tile, <|image|> + the global thumbnail's patch tokens, <|image_end|>.
    The tile count this needs: rows * cols (+ 1 when > 1)."""
    out = [BOI]
    if rows * cols > 1:
        for _ in range(rows):
            for c in range(cols):
                out += [PATCH] * per_tile + ([TILE_X] if c < cols - 1 else [])
            out.append(TILE_Y)
    out += [IMAGE] + [PATCH] * per_tile + [EOI]
    return out


def num_tiles(rows: int, cols: int) -> int:
    return rows * cols + (rows * cols > 1)
