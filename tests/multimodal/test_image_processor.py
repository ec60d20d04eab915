"""Image processor and prompt expansion against transformers' Llama4ImageProcessor / Llama4Processor:
pixel values bit for bit, aspect ratios, resize targets and expanded token ids identical.

The reference runs once per module in a child process (hf_image_reference.py explains why and which
torchvision it uses); ~15-25 s in all on 2 cores.
"""
from __future__ import annotations

import random

import pytest
import torch

from amd_llama4.engine.tokenizer import Tokenizer, tiny_tokenizer_dir
from amd_llama4.multimodal import (IMAGE, ImageProcessorConfig, ImageTokenIds, Llama4ImageProcessor,
                                   best_grid, expand_prompt, expand_token_ids, max_image_tokens, resized_size,
                                   tile_grids, tokens_per_tile)
from tests.multimodal.hf_image_reference import make_image, run_reference

pytest.importorskip("transformers")

RELEASED: dict = {}  # transformers' defaults are the released preprocessor_config.json's values
TINY = {"size": {"height": 56, "width": 56}}
S = 336


def _sizes() -> list[tuple[int, int]]:
    """1x1, 1x1000, exactly tile-sized grids, larger than the largest canvas (4x4 tiles = 1344
    square, 16x1 = 5376 tall), and random sizes."""
    fixed = [(1, 1), (1, 1000), (1000, 1), (S, S), (S, 2 * S), (3 * S, S), (2 * S, 2 * S), (S + 1, S - 1),
             (1500, 1500), (6000, 200), (150, 4000), (2, 3)]
    rng = random.Random(15)
    rand = [(rng.randint(1, 1800), rng.randint(1, 1800)) for _ in range(12)]
    return fixed + rand


SIZES = _sizes()
# (config, [(h, w, seed, mode), ...]): one image per task, a few multi-image tasks, other modes/configs.
PIXEL_TASKS = ([(RELEASED, [(h, w, i, "RGB")]) for i, (h, w) in enumerate(SIZES)]
               + [(RELEASED, [(40, 700, 100, "RGBA"), (300, 200, 101, "L"), (S, S, 102, "RGB")]),
                  (TINY, [(1, 1, 200, "RGB"), (56, 112, 201, "RGB"), (300, 90, 202, "RGB"), (97, 61, 203, "RGBA")]),
                  ({"resize_to_max_canvas": True, "max_patches": 6}, [(120, 500, 300, "RGB")]),
                  ({"resample": 3, "image_mean": [0.48, 0.45, 0.4], "image_std": [0.27, 0.26, 0.28]},
                   [(700, 500, 400, "RGB")])])


def _geometry_sizes() -> list[tuple[int, int]]:
    # Canvas edges and their neighbours, where float32 rounding and ties decide; the reference
    # allocates each image, so sizes stay moderate (the pixel tests cover the very large ones).
    edges = [1, 2, 13, 55, 56, 57, 111, 112, 113, S - 1, S, S + 1, 2 * S - 1, 2 * S, 2 * S + 1, 1343, 1345]
    rng = random.Random(1)
    return [(h, w) for h in edges for w in edges] + [(rng.randint(1, 1500), rng.randint(1, 1500))
                                                    for _ in range(150)]


GEOMETRY_SIZES = _geometry_sizes()
GEOMETRY_CONFIGS = [RELEASED, TINY, {"resize_to_max_canvas": True}, {"max_patches": 5}, {"max_patches": 1}]
N_OTHER = 150  # sizes checked for the other configs (each reference call costs ~10 ms)


def _geometry_sizes_for(i: int) -> list[tuple[int, int]]:
    return GEOMETRY_SIZES if i == 0 else GEOMETRY_SIZES[i::len(GEOMETRY_CONFIGS)][:N_OTHER]


def _prompt_cases(per_image: list) -> list:
    return [("plain text, no image", []),
            (f"<|header_start|>user<|header_end|>\n\n{IMAGE}What is this?<|eot|>", per_image[:1]),
            (f"{IMAGE}{IMAGE} two images, then text", per_image[1:3]),
            (f"a{IMAGE}b {IMAGE} c{IMAGE}", per_image[3:6])]


PROMPT_IMAGES = [(1, 1, 0, "RGB"), (30, 200, 1, "RGB"), (130, 60, 2, "RGB"), (56, 56, 3, "RGB"),
                 (500, 500, 4, "RGB"), (112, 56, 5, "RGB")]
PROMPT_CASES = _prompt_cases([list(x) for x in PROMPT_IMAGES])
PROMPT_CONFIGS = [(TINY, 14, 0.5), ({**TINY, "max_patches": 4}, 28, 0.5), ({"max_patches": 4}, 14, 0.5)]


def _tasks() -> list[dict]:
    tok_file = str(tiny_tokenizer_dir() / "tokenizer.json")
    return ([{"kind": "pixels", "config": c, "images": [list(x) for x in ims]} for c, ims in PIXEL_TASKS]
            + [{"kind": "geometry", "config": c, "sizes": [list(s) for s in _geometry_sizes_for(i)]}
               for i, c in enumerate(GEOMETRY_CONFIGS)]
            + [{"kind": "prompts", "config": c, "patch_size": p, "pixel_shuffle_ratio": r,
                "tokenizer_file": tok_file, "prompts": PROMPT_CASES} for c, p, r in PROMPT_CONFIGS])


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    results, kind = run_reference(_tasks(), tmp_path_factory.mktemp("hf_ref"))
    print(f"reference processor: transformers with {kind} torchvision")
    return results, kind


def _ours(config: dict) -> Llama4ImageProcessor:
    return Llama4ImageProcessor(ImageProcessorConfig.from_dict(config))


def test_pixel_values_identical(reference):
    results, _ = reference
    for (config, ims), ref in zip(PIXEL_TASKS, results):
        out = _ours(config)([make_image(*im) for im in ims])
        assert out.aspect_ratios == [tuple(r) for r in ref["aspect_ratios"]], ims
        assert out.pixel_values.dtype == ref["pixel_values"].dtype == torch.bfloat16
        assert out.pixel_values.shape == ref["pixel_values"].shape, ims
        assert torch.equal(out.pixel_values, ref["pixel_values"]), (config, ims)
        assert out.pixel_values.shape[0] == sum(out.tiles_per_image)


def test_grid_and_resize_target_identical(reference):
    results, _ = reference
    geometry = results[len(PIXEL_TASKS):len(PIXEL_TASKS) + len(GEOMETRY_CONFIGS)]
    for i, (config, ref) in enumerate(zip(GEOMETRY_CONFIGS, geometry)):
        cfg = ImageProcessorConfig.from_dict(config)
        assert len(ref) == len(_geometry_sizes_for(i))
        for (h, w), (grid, target) in zip(_geometry_sizes_for(i), ref):
            g = best_grid(h, w, cfg)
            assert (g, resized_size(h, w, *g, cfg)) == (tuple(grid), tuple(target)), (config, h, w)


def test_expanded_prompts_identical(reference):
    results, _ = reference
    tok = Tokenizer.from_pretrained("tiny-scout")
    ids = ImageTokenIds.from_tokenizer(tok)
    for (config, patch, ratio), ref in zip(PROMPT_CONFIGS, results[-len(PROMPT_CONFIGS):]):
        proc = _ours(config)
        per_tile = tokens_per_tile(proc.config.tile_size, patch, ratio)
        for (text, ims), ref_ids in zip(PROMPT_CASES, ref):
            ratios = proc([make_image(*im) for im in ims]).aspect_ratios if ims else []
            expanded = tok.encode(expand_prompt(text, ratios, per_tile), add_bos=False)
            assert expanded == ref_ids, (config, text)
            assert expand_token_ids(tok.encode(text, add_bos=False), ids, ratios, per_tile) == ref_ids
            n_img = sum(r * c + (r * c > 1) for r, c in ratios)
            assert ref_ids.count(ids.patch) == n_img * per_tile
            assert all(len(expand_prompt(IMAGE, [r], per_tile)) > 0 for r in ratios)


def test_shim_equals_real_torchvision(reference, tmp_path):
    """The stand-in used offline gives the same reference outputs as the real torchvision."""
    results, kind = reference
    if kind != "real":
        pytest.skip("real torchvision not obtainable here: nothing to compare the shim with")
    picked = [0, 1, 3, 6, 8, *range(len(SIZES), len(PIXEL_TASKS))]  # small, tile-sized, all variants
    tasks = [_tasks()[i] for i in picked]
    shim, _ = run_reference(tasks, tmp_path, real=False)
    for a, b in zip(shim, [results[i] for i in picked]):
        assert torch.equal(a["pixel_values"], b["pixel_values"]) and a["aspect_ratios"] == b["aspect_ratios"]


# -- without the reference ----------------------------------------------------------------------

def test_tile_grids_and_token_counts():
    grids = tile_grids(16)
    assert len(grids) == len(set(grids)) == sum(len([d for d in range(1, n + 1) if n % d == 0]) for n in range(1, 17))
    assert all(r * c <= 16 for r, c in grids)
    assert tokens_per_tile(336, 14, 0.5) == 144 and tokens_per_tile(56, 14, 0.5) == 4
    assert max_image_tokens(16, 144) == 17 * 144 + 16 + 3
    proc = _ours(TINY)
    tok = Tokenizer.from_pretrained("tiny-scout")
    worst = proc([make_image(56 * 4, 56 * 4, 0)]).aspect_ratios  # 4x4: the largest grid
    assert worst == [(4, 4)]
    assert len(tok.encode(expand_prompt(IMAGE, worst, 4), add_bos=False)) == max_image_tokens(16, 4)


def test_tensor_input_and_noncontiguous():
    img = make_image(90, 130, 7)
    proc = _ours(TINY)
    ref = proc(img).pixel_values
    t = torch.from_numpy(__import__("numpy").array(img)).permute(2, 0, 1)  # [3, H, W], non-contiguous
    assert not t.is_contiguous()
    assert torch.equal(proc(t).pixel_values, ref)
    assert torch.equal(proc([img, t]).pixel_values, torch.cat([ref, ref]))


def test_config_from_json_and_tiny_preset_file(tmp_path):
    cfg = ImageProcessorConfig.from_pretrained(tiny_tokenizer_dir())
    assert (cfg.tile_size, cfg.max_patches) == (56, 16)
    assert ImageProcessorConfig.from_dict(cfg.to_dict()) == cfg
    assert ImageProcessorConfig.from_dict({}) == ImageProcessorConfig()  # released defaults


@pytest.mark.parametrize("d, match", [
    ({"size": {"height": 336, "width": 224}}, "square"),
    ({"do_resize": False}, "do_resize"),
    ({"resample": 1}, "resample"),
    ({"image_std": [0.5, 0.0, 0.5]}, "image_std"),
    ({"max_patches": 0}, "max_patches"),
    ({"do_rescale": False}, "do_normalize without do_rescale"),
])
def test_config_errors(d, match):
    with pytest.raises(ValueError, match=match):
        ImageProcessorConfig.from_dict(d)


def test_input_errors(tmp_path):
    proc = _ours(TINY)
    with pytest.raises(ValueError, match="empty list"):
        proc([])
    with pytest.raises(TypeError, match="PIL"):
        proc("not an image")
    with pytest.raises(ValueError, match="uint8"):
        proc(torch.zeros(3, 4, 4))
    with pytest.raises(FileNotFoundError, match="preprocessor_config.json"):
        ImageProcessorConfig.from_pretrained(tmp_path)
    (tmp_path / "preprocessor_config.json").write_text("{oops")
    with pytest.raises(ValueError, match="invalid JSON"):
        ImageProcessorConfig.from_pretrained(tmp_path)


def test_prompt_errors():
    tok = Tokenizer.from_pretrained("tiny-scout")
    ids = ImageTokenIds.from_tokenizer(tok)
    with pytest.raises(ValueError, match="1 <\\|image\\|> placeholder.*2 image"):
        expand_prompt(f"x{IMAGE}", [(1, 1), (1, 2)], 4)
    with pytest.raises(ValueError, match="0 <\\|image\\|> token"):
        expand_token_ids([1, 2], ids, [(1, 1)], 4)

    class NoImages:
        source = "text-only"

        def token_to_id(self, s):
            return None

    with pytest.raises(ValueError, match="no id for"):
        ImageTokenIds.from_tokenizer(NoImages())
