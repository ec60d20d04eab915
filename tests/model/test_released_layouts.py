"""Scout, Maverick and Maverick-FP8 at full size, from safetensors headers alone: load_model(...,
device="meta") builds the multimodal model (text and vision tower) and checks every tensor name,
shape and dtype of the release, and reads no data."""
import pytest
import torch

from amd_llama4 import CheckpointError, load_model
from amd_llama4.model import safetensors_io
from amd_llama4.model.multimodal import Llama4ForConditionalGeneration, is_vision_param
from amd_llama4.parallel.tp import Parallel
from amd_llama4.quant.fp8 import FP8Experts
from tests.model.released import nbytes, vision_tensors, write_header_only


@pytest.fixture(scope="module")
def releases(tmp_path_factory):
    root = tmp_path_factory.mktemp("released")
    return {k: (str(root / k), write_header_only(str(root / k), k)) for k in ("scout", "maverick", "maverick-fp8")}


@pytest.fixture
def no_reads(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("tensor data was read on the meta device")

    monkeypatch.setattr(safetensors_io, "safe_open", refuse)


def _param_bytes(model) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


@pytest.mark.parametrize("kind", ["scout", "maverick", "maverick-fp8"])
def test_release_loads_from_headers_alone(kind, releases, no_reads):
    folder, table = releases[kind]
    assert len({f for f in __import__("os").listdir(folder) if f.endswith(".safetensors")}) > 10  # sharded
    m = load_model(folder, device="meta", dtype=torch.bfloat16, progress=False)
    assert isinstance(m, Llama4ForConditionalGeneration)
    assert all(p.device.type == "meta" for p in m.parameters())
    # every tensor (text and vision) became a parameter (the loader refuses unused ones), byte for byte
    assert len(list(m.parameters())) == len(table)
    assert _param_bytes(m) == sum(nbytes(*v) for v in table.values())
    params = dict(m.named_parameters())
    for name, (dt, shape) in table.items():
        p = params[name.removeprefix("language_model.")]
        if name.endswith("experts.down_proj_scale"):  # fbgemm [E, H, 1] is held as [E, 1, H]
            shape = (shape[0], 1, shape[1])
        assert tuple(p.shape) == shape, name
        if is_vision_param(name):  # bf16 in every release, FP8 included
            assert p.dtype == torch.bfloat16, name
    v = m.config.vision_config
    assert (v.tokens_per_tile, m.config.image_token_index) == (144, 200092)
    moe = m.model.layers[1].feed_forward.experts
    if kind == "maverick-fp8":
        assert isinstance(moe, FP8Experts) and moe.gate_up_proj.dtype == torch.float8_e4m3fn
        assert m.model.layers[1].self_attn.q_proj.weight.dtype == torch.bfloat16  # in modules_to_not_convert
        assert m.model.layers[0].feed_forward.gate_proj.weight.dtype == torch.bfloat16
    else:
        assert moe.gate_up_proj.dtype == torch.bfloat16
    n_experts = {"scout": 16}.get(kind, 128)
    assert moe.gate_up_proj.shape == (n_experts, 5120, 16384)


def test_wrong_full_size_shape_named(tmp_path, no_reads):
    bad = "language_model.model.layers.47.feed_forward.experts.down_proj"

    def edit(t):
        t[bad] = ("BF16", (16, 8192, 5121))

    folder = str(tmp_path / "s")
    write_header_only(folder, "scout", edit=edit)
    with pytest.raises(CheckpointError, match=rf"model-000\d\d-of-000\d\d\.safetensors: tensor '{bad}' has shape "
                                              r"\[16, 8192, 5121\], expected \[16, 8192, 5120\]"):
        load_model(folder, device="meta", dtype=torch.bfloat16, progress=False)


def test_fp8_release_with_bf16_experts_is_refused(tmp_path, no_reads):
    name = "language_model.model.layers.5.feed_forward.experts.gate_up_proj"

    def edit(t):
        t[name] = ("BF16", t[name][1])

    folder = str(tmp_path / "m")
    write_header_only(folder, "maverick-fp8", edit=edit)
    with pytest.raises(CheckpointError, match=r"tensor 'model\.layers\.5\.feed_forward\.experts\.gate_up_proj' has "
                                              r"dtype torch\.bfloat16, expected torch\.float8_e4m3fn"):
        load_model(folder, device="meta", dtype=torch.bfloat16, progress=False)


@pytest.mark.parametrize("kind", ["scout", "maverick-fp8"])
def test_release_tower_is_replicated_under_tensor_parallel(kind, releases, no_reads):
    folder, table = releases[kind]
    vision = sum(nbytes(*v) for v in vision_tensors().values())
    assert vision > 1.7e9  # ~0.87 B parameters
    for w in (4, 8):
        m = load_model(folder, device="meta", dtype=torch.bfloat16, progress=False, parallel=Parallel(0, w))
        assert sum(p.numel() * p.element_size() for n, p in m.named_parameters() if is_vision_param(n)) == vision


def test_release_missing_vision_tensor_named(tmp_path, no_reads):
    gone = "vision_model.model.layers.33.mlp.fc2.weight"

    def edit(t):
        del t[gone]

    folder = str(tmp_path / "v")
    write_header_only(folder, "scout", edit=edit)
    with pytest.raises(CheckpointError, match=rf"missing tensor '{gone}'"):
        load_model(folder, device="meta", dtype=torch.bfloat16, progress=False)
