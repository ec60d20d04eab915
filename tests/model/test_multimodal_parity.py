"""Multimodal logits equal transformers' Llama4ForConditionalGeneration (fp32, relative 1e-4) on a
random checkpoint saved by transformers and read back by our loader: tile layouts 1x1, 1x2, 2x2, 3x1,
two images in one prompt, a batch of prompts with different images, a text-only prompt."""
import pytest
import torch

from amd_llama4 import load_model
from amd_llama4.model.multimodal import Llama4ForConditionalGeneration
from tests.model.multimodal_reference import PATCH, config, hf_logits, image_tokens, num_tiles, save_hf


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mm")
    cfg = config()
    hf = save_hf(cfg, folder, seed=3)
    ours = load_model(folder, progress=False)
    assert isinstance(ours, Llama4ForConditionalGeneration)
    return cfg, hf, ours


def _prompt(g, layouts, per_tile, text=5):
    """Random text around each image's tokens -> (ids [S], tiles)."""
    ids, tiles = [], 0
    for rows, cols in layouts:
        ids += torch.randint(3, 100, (text,), generator=g).tolist() + image_tokens(rows, cols, per_tile)
        tiles += num_tiles(rows, cols)
    return ids + torch.randint(3, 100, (text,), generator=g).tolist(), tiles


def _close(got, want):
    assert got.dtype == torch.float32 and got.shape == want.shape
    # relative 1e-4 of the logits' scale (elementwise relative is meaningless for logits near 0)
    err = ((got - want).abs().max() / want.abs().max()).item()
    assert err <= 1e-4, f"max |diff| / max |logit| = {err:.3g}"


@pytest.mark.parametrize("layouts", [[(1, 1)], [(1, 2)], [(2, 2)], [(3, 1)], [(1, 2), (2, 2)]],
                         ids=["1x1", "1x2", "2x2", "3x1", "two-images"])
def test_prompt_with_images(models, layouts):
    cfg, hf, ours = models
    g = torch.Generator().manual_seed(len(layouts) * 10 + layouts[0][0] * 3 + layouts[0][1])
    ids, tiles = _prompt(g, layouts, cfg.vision_config.tokens_per_tile)
    ids = torch.tensor([ids])
    pixels = torch.randn(tiles, 3, 56, 56, generator=g)
    want = hf_logits(hf, ids, pixels)
    _close(ours(ids, pixel_values=pixels), want)
    # the image matters: other pixels, other logits (after the first image token only)
    first = int((ids[0] == PATCH).nonzero()[0])
    other = ours(ids, pixel_values=torch.randn(tiles, 3, 56, 56, generator=g))
    assert torch.equal(other[:, :first], want[:, :first].to(other.dtype)) or \
        (other[:, :first] - want[:, :first]).abs().max() <= 1e-4 * want.abs().max()
    assert (other[:, first:] - want[:, first:]).abs().max() > 1e-2 * want.abs().max()


def test_batch_of_prompts_with_different_images(models):
    cfg, hf, ours = models
    g = torch.Generator().manual_seed(7)
    per_tile = cfg.vision_config.tokens_per_tile
    a, ta = _prompt(g, [(2, 2)], per_tile, text=3)
    b, tb = _prompt(g, [(1, 1), (3, 1)], per_tile, text=3)
    S = max(len(a), len(b))
    a += torch.randint(3, 100, (S - len(a),), generator=g).tolist()  # same length, no padding semantics
    b += torch.randint(3, 100, (S - len(b),), generator=g).tolist()
    ids = torch.tensor([a, b])
    pixels = torch.randn(ta + tb, 3, 56, 56, generator=g)  # prompt 0's tiles, then prompt 1's
    want = hf_logits(hf, ids, pixels)
    _close(ours(ids, pixel_values=pixels), want)
    # each row equals the same prompt run alone with its own tiles
    _close(ours(ids[1:], pixel_values=pixels[ta:]), want[1:])


def test_text_only_prompt_on_multimodal_checkpoint(models):
    cfg, hf, ours = models
    ids = torch.randint(3, 100, (2, 37), generator=torch.Generator().manual_seed(5))
    _close(ours(ids), hf_logits(hf, ids, None))


def test_image_tokens_and_tiles_must_agree(models):
    cfg, _, ours = models
    per_tile = cfg.vision_config.tokens_per_tile
    ids = torch.tensor([[5] + image_tokens(1, 2, per_tile)])  # 3 tiles' worth of tokens
    with pytest.raises(ValueError, match=r"input_ids hold 12 image tokens \(id 119, <\|patch\|>\) but "
                                         r"image_features has 8 rows \(2 tiles of 4 tokens\)"):
        ours(ids, pixel_values=torch.randn(2, 3, 56, 56))
    with pytest.raises(ValueError, match="image tokens .* but no pixel_values"):
        ours(ids)
    with pytest.raises(ValueError, match=r"pixel_values: shape \(3, 3, 28, 28\), expected \[num_tiles, 3, 56, 56\]"):
        ours(ids, pixel_values=torch.randn(3, 3, 28, 28))


def test_embed_then_hidden_states_equals_forward(models):
    """The engine's path: image_features once, embed per prefill piece, hidden_states(inputs_embeds=)."""
    cfg, _, ours = models
    g = torch.Generator().manual_seed(11)
    ids, tiles = _prompt(g, [(1, 2)], cfg.vision_config.tokens_per_tile)
    ids = torch.tensor([ids])
    pixels = torch.randn(tiles, 3, 56, 56, generator=g)
    with torch.no_grad():
        feats = ours.image_features(pixels)
        got = ours.compute_logits(ours.hidden_states(ids, inputs_embeds=ours.embed(ids, feats)))
    assert feats.shape == (tiles * cfg.vision_config.tokens_per_tile, cfg.hidden_size)
    torch.testing.assert_close(got, ours(ids, pixel_values=pixels), rtol=0, atol=0)
