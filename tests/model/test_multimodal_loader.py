"""Loading multimodal checkpoints: the vision tower from every released layout (flat, nested under
`model.`, text prefixed or not, sharded), missing / unknown vision tensors named, a vision_config
without a tower loads the text model, tensor parallelism replicates the tower, FP8 leaves it alone."""
import json

import pytest
import torch
from safetensors.torch import save_file

from amd_llama4 import CheckpointError, load_model
from amd_llama4.model.llama4 import Llama4ForCausalLM
from amd_llama4.model.multimodal import Llama4ForConditionalGeneration, is_vision_param
from amd_llama4.parallel.tp import Parallel
from tests.model.multimodal_reference import config, hf_logits, hf_model, image_tokens, num_tiles

CFG = config()


@pytest.fixture(scope="module")
def reference():
    hf = hf_model(CFG, seed=5)
    g = torch.Generator().manual_seed(2)
    ids = torch.tensor([[7, 8] + image_tokens(1, 2, 4) + [9, 10]])
    pixels = torch.randn(num_tiles(1, 2), 3, 56, 56, generator=g)
    return hf, ids, pixels, hf_logits(hf, ids, pixels)


def _write(folder, tensors: dict, shards: int = 1, cfg: dict | None = None):
    folder.mkdir(parents=True, exist_ok=True)
    names = sorted(tensors)
    if shards == 1:
        save_file({n: tensors[n].contiguous() for n in names}, str(folder / "model.safetensors"))
    else:
        weight_map = {}
        for k in range(shards):
            file = f"model-{k + 1:05d}-of-{shards:05d}.safetensors"
            part = names[k::shards]
            save_file({n: tensors[n].contiguous() for n in part}, str(folder / file))
            weight_map.update({n: file for n in part})
        (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    (folder / "config.json").write_text(json.dumps(cfg or CFG.to_hf_multimodal_dict()))
    return str(folder)


def _nested(name: str) -> str:
    """HF's state-dict names -> the nested layout (`model.vision_model.*`, `model.language_model.*`)."""
    if name.startswith("language_model.model."):
        return "model.language_model." + name[len("language_model.model."):]
    if name.startswith("language_model."):
        return name[len("language_model."):]  # lm_head.weight
    return "model." + name


LAYOUTS = {
    "flat-prefixed": lambda n: n,  # HF save_pretrained: text under language_model., tower flat
    "nested": _nested,
    "text-unprefixed": lambda n: n.removeprefix("language_model."),
}


@pytest.mark.parametrize("shards", [1, 3])
@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_layouts_load_the_tower(layout, shards, reference, tmp_path):
    hf, ids, pixels, want = reference
    folder = _write(tmp_path / layout, {LAYOUTS[layout](k): v for k, v in hf.state_dict().items()}, shards)
    m = load_model(folder, progress=False)
    assert isinstance(m, Llama4ForConditionalGeneration)
    got = m(ids, pixel_values=pixels)
    assert ((got - want).abs().max() / want.abs().max()).item() <= 1e-4


def test_missing_and_unknown_vision_tensors_are_named(reference, tmp_path):
    hf = reference[0]
    sd = dict(hf.state_dict())
    gone = "vision_model.model.layers.1.mlp.fc2.bias"
    del sd[gone]
    with pytest.raises(CheckpointError, match=rf"missing tensor '{gone}' \(also looked for 'model\.{gone}'\)"):
        load_model(_write(tmp_path / "a", sd), progress=False)
    sd = dict(hf.state_dict(), **{"vision_model.extra.weight": torch.zeros(2)})
    with pytest.raises(CheckpointError, match=r"unexpected tensor 'vision_model\.extra\.weight'"):
        load_model(_write(tmp_path / "b", sd), progress=False)
    sd = dict(hf.state_dict())
    bad = "multi_modal_projector.linear_1.weight"
    sd[bad] = torch.zeros(64, 40)
    with pytest.raises(CheckpointError, match=rf"tensor '{bad}' has shape \[64, 40\], expected \[64, 48\]"):
        load_model(_write(tmp_path / "c", sd), progress=False)


def test_vision_config_without_a_tower_loads_the_text_model(reference, tmp_path):
    hf, ids, _, _ = reference
    text = {k: v for k, v in hf.state_dict().items() if not is_vision_param(k)}
    m = load_model(_write(tmp_path / "t", text), progress=False)
    assert type(m) is Llama4ForCausalLM and m.config.vision_config is None
    plain = ids.masked_fill(ids == CFG.image_token_index, 5)
    torch.testing.assert_close(m(plain), hf_logits(hf, plain, None), rtol=1e-4, atol=1e-4)


def test_tensor_parallel_ranks_replicate_the_tower(reference, tmp_path):
    folder = _write(tmp_path / "tp", dict(reference[0].state_dict()))
    full = dict(load_model(folder, progress=False).named_parameters())
    for r in (0, 1):
        rank = load_model(folder, progress=False, parallel=Parallel(r, 2))
        params = dict(rank.named_parameters())
        assert isinstance(rank, Llama4ForConditionalGeneration)
        for n, p in full.items():
            if is_vision_param(n):
                torch.testing.assert_close(params[n], p, rtol=0, atol=0)
        q = "model.layers.0.self_attn.q_proj.weight"
        assert params[q].shape[0] == full[q].shape[0] // 2  # the text model is still sharded


def test_fp8_leaves_the_tower_in_high_precision(reference, tmp_path):
    from amd_llama4.quant.fp8 import FP8Linear

    folder = _write(tmp_path / "q", dict(reference[0].state_dict()))
    m = load_model(folder, progress=False, quantization="fp8")
    fp8 = {n for n, mod in m.named_modules() if isinstance(mod, FP8Linear)}
    assert "model.layers.0.self_attn.q_proj" in fp8
    assert not any(is_vision_param(n + ".") for n in fp8)
    full = dict(load_model(folder, progress=False).named_parameters())
    for n, p in m.named_parameters():
        if is_vision_param(n):
            assert p.dtype == torch.float32
            torch.testing.assert_close(p, full[n], rtol=0, atol=0)
    _, ids, pixels, want = reference
    got = m(ids, pixel_values=pixels)  # runs end to end; FP8 text model: loose agreement only
    assert ((got - want).abs().max() / want.abs().max()).item() < 0.2
