"""The vision tower and its config against transformers' Llama4VisionModel / Llama4VisionConfig."""
import json

import pytest
import torch

from amd_llama4.config import Llama4Config, Llama4VisionConfig, preset
from amd_llama4.model.vision import Llama4VisionModel, pixel_shuffle
from tests.model.multimodal_reference import VISION, config, hf_model

hf_llama4 = pytest.importorskip("transformers.models.llama4.modeling_llama4")


@pytest.fixture(scope="module")
def towers():
    hf = hf_model(config(), seed=1)
    ours = Llama4VisionModel(config().vision_config)
    missing = ours.load_state_dict({k.removeprefix("vision_model."): v for k, v in hf.state_dict().items()
                                    if k.startswith("vision_model.")}, strict=True)
    assert not missing.missing_keys and not missing.unexpected_keys
    return hf.vision_model, ours.eval()


@pytest.mark.parametrize("tiles", [1, 3, 5])
def test_tower_equals_transformers(towers, tiles):
    hf, ours = towers
    pixels = torch.randn(tiles, 3, 56, 56, generator=torch.Generator().manual_seed(tiles))
    with torch.no_grad():
        want = hf(pixels).last_hidden_state
        got = ours(pixels)
    assert got.shape == (tiles, 4, VISION["projector_output_dim"])
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * want.abs().max().item())
    # tiles are independent: each tile alone gives its row of the batch
    torch.testing.assert_close(ours(pixels[-1:]), got[-1:], rtol=1e-5, atol=1e-6)


def test_tower_non_contiguous_and_bf16_pixels(towers):
    _, ours = towers
    base = torch.randn(2, 56, 56, 3, generator=torch.Generator().manual_seed(9))
    pixels = base.permute(0, 3, 1, 2)  # channels-last storage: non-contiguous NCHW view
    assert not pixels.is_contiguous()
    with torch.no_grad():
        torch.testing.assert_close(ours(pixels), ours(pixels.contiguous()), rtol=0, atol=0)
        # bf16 pixels (the processor's output) are cast to the tower's dtype, not refused
        torch.testing.assert_close(ours(pixels.bfloat16()), ours(pixels.bfloat16().float()), rtol=0, atol=0)


@pytest.mark.parametrize("n", [2, 4, 24])
def test_pixel_shuffle_equals_transformers(n):
    x = torch.randn(3, n * n, 8, generator=torch.Generator().manual_seed(n))
    torch.testing.assert_close(pixel_shuffle(x, 0.5), hf_llama4.pixel_shuffle(x, 0.5), rtol=0, atol=0)


def test_tower_in_bf16_close_to_fp32(towers):
    _, ours = towers
    pixels = torch.randn(2, 3, 56, 56, generator=torch.Generator().manual_seed(4))
    low = Llama4VisionModel(ours.config).to(torch.bfloat16)
    low.load_state_dict(ours.state_dict())
    with torch.no_grad():
        want, got = ours(pixels), low(pixels)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), want, rtol=5e-2, atol=5e-2 * want.abs().max().item())


def test_released_vision_config_from_config_json(tmp_path):
    released = {"model_type": "llama4", "image_token_index": 200092, "boi_token_index": 200080,
                "eoi_token_index": 200081, "text_config": preset("scout").to_hf_dict(),
                "vision_config": {"attention_dropout": 0.0, "hidden_act": "gelu", "hidden_size": 1408,
                                  "image_size": 336, "initializer_range": 0.02, "intermediate_layers_indices": [],
                                  "intermediate_size": 5632, "model_type": "llama4_vision_model",
                                  "multi_modal_projector_bias": False, "norm_eps": 1e-05, "num_attention_heads": 16,
                                  "num_channels": 3, "num_hidden_layers": 34, "patch_size": 14,
                                  "pixel_shuffle_ratio": 0.5, "projector_dropout": 0.0, "projector_input_dim": 4096,
                                  "projector_output_dim": 4096, "rope_theta": 10000, "vision_feature_layer": -1,
                                  "vision_feature_select_strategy": "default", "vision_output_dim": 4096}}
    (tmp_path / "config.json").write_text(json.dumps(released))
    cfg = Llama4Config.from_pretrained(tmp_path)
    assert cfg == preset("scout") and cfg.is_multimodal
    v = cfg.vision_config
    assert (v.head_dim, v.patches_per_side, v.tokens_per_tile) == (88, 24, 144)
    assert preset("maverick").vision_config == v


def test_transformers_reads_our_multimodal_config_back():
    transformers = pytest.importorskip("transformers")
    cfg = preset("tiny-scout")
    hf = transformers.Llama4Config(**cfg.to_hf_multimodal_dict())
    assert hf.image_token_index == cfg.image_token_index and hf.vision_config.image_size == 56
    assert hf.vision_config.rope_parameters["rope_theta"] == 10000.0
    # transformers 5's own save (rope_parameters, dtype) parses to the same config
    assert Llama4Config.from_dict(hf.to_dict()) == cfg
    assert "vision_config" not in cfg.to_hf_dict()  # the flat text form stays text-only
    with pytest.raises(ValueError, match="text-only config has no multimodal form"):
        Llama4Config().to_hf_multimodal_dict()


@pytest.mark.parametrize("field,value,match", [
    ("hidden_act", "silu", "hidden_act: 'silu' unsupported"),
    ("num_attention_heads", 3, "num_attention_heads: 3 does not divide hidden_size=32"),
    ("hidden_size", 20, "hidden_size: head_dim 10 .* multiple of 4"),
    ("image_size", 50, "image_size: 50 is not a multiple of patch_size=14"),
    ("pixel_shuffle_ratio", 0.3, "pixel_shuffle_ratio: 0.3"),
    ("intermediate_size", 100, "intermediate_size: 100 must equal .* = 128"),
    ("vision_output_dim", 40, "vision_output_dim: 40 must equal projector_output_dim=48"),
])
def test_bad_vision_fields_are_named(field, value, match):
    kw = dict(VISION, **{field: value})
    if field == "hidden_size":
        kw["intermediate_size"] = 80
    with pytest.raises(ValueError, match="Llama4VisionConfig." + match):
        Llama4VisionConfig(**kw)


def test_image_token_outside_vocab_is_named():
    from amd_llama4.model.multimodal import Llama4ForConditionalGeneration

    with pytest.raises(ValueError, match=r"Llama4Config.image_token_index: 500 not in \[0, vocab_size=120\)"):
        Llama4ForConditionalGeneration(Llama4Config(**{**config().__dict__, "image_token_index": 500}))


@pytest.mark.parametrize("name", ["tiny-scout", "tiny-maverick"])
def test_tiny_presets_match_the_tiny_tokenizer_and_processor(name):
    from tokenizers import Tokenizer

    from amd_llama4.engine.tokenizer import tiny_tokenizer_dir

    cfg, folder = preset(name), tiny_tokenizer_dir()
    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    assert (tok.token_to_id("<|patch|>"), tok.token_to_id("<|image_start|>"), tok.token_to_id("<|image_end|>")) == \
        (cfg.image_token_index, cfg.boi_token_index, cfg.eoi_token_index)
    size = json.loads((folder / "preprocessor_config.json").read_text())["size"]
    assert size == {"height": cfg.vision_config.image_size, "width": cfg.vision_config.image_size}
