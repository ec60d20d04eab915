"""int4 checkpoints: compressed-tensors pack-quantized (made by the compressed-tensors package) and GPTQ
(v1 and v2 zero points) load into Int4Linear / Int4Experts with logits equal to transformers on the
dequantised weights (fp32, 1e-4); the meta device reads headers only; bad configs and tensors fail
naming the field or the tensor and file."""
import json
import os

import pytest
import torch
from safetensors.torch import load_file, save_file

from amd_llama4 import CheckpointError, load_model
from amd_llama4.model.llama4 import Linear
from amd_llama4.quant.compressed_tensors import pack_rows, unpack_rows
from amd_llama4.quant.int4 import Int4Experts, Int4Linear
from tests.quant.int4_fixtures import CFG, save_compressed_tensors, save_gptq

pytest.importorskip("compressed_tensors")

IDS = torch.randint(0, CFG["vocab_size"], (2, 11), generator=torch.Generator().manual_seed(0))


def _check(folder, hf, group_size, zero_point):
    model = load_model(folder, progress=False, device="cpu", dtype=torch.float32)
    q = model.quant_config
    assert (q.method, q.group_size, q.zero_point) == ("int4", group_size, zero_point)
    dense, moe = model.model.layers[0], model.model.layers[1]
    for m in (dense.self_attn.q_proj, dense.self_attn.o_proj, dense.feed_forward.down_proj,
              moe.feed_forward.shared_expert.up_proj):
        assert isinstance(m, Int4Linear) and (m.zeros is not None) == zero_point
    assert isinstance(moe.feed_forward.experts, Int4Experts)
    assert type(moe.feed_forward.router) is Linear and type(model.lm_head) is Linear
    with torch.no_grad():
        want = hf(IDS).logits
    torch.testing.assert_close(model(IDS), want, atol=1e-4, rtol=1e-4)
    return model


@pytest.mark.parametrize("group_size,symmetric", [(32, True), (32, False), (128, True), (128, False)])
def test_compressed_tensors_logits_equal_dequantised(tmp_path, group_size, symmetric):
    hf = save_compressed_tensors(tmp_path, group_size, symmetric)
    _check(tmp_path, hf, group_size, not symmetric)


@pytest.mark.parametrize("group_size,symmetric,fmt", [(64, False, "gptq"), (128, True, "gptq"),
                                                      (32, False, "gptq_v2")])
def test_gptq_logits_equal_dequantised(tmp_path, group_size, symmetric, fmt):
    hf = save_gptq(tmp_path, group_size, symmetric, fmt)
    _check(tmp_path, hf, group_size, not symmetric)


def test_int4_checkpoint_meta_device_reads_headers_only(tmp_path):
    save_compressed_tensors(tmp_path, 32, False)
    model = load_model(tmp_path, progress=False, device="meta")
    ex = model.model.layers[1].feed_forward.experts
    assert ex.w13_q.device.type == "meta" and ex.w13_q.shape == (4, 256, 64) and ex.w2_z.shape == (4, 128, 4)


def test_zero_point_packing_matches_compressed_tensors():
    """Our output-dim packing of zero points against the package's pack/unpack, odd row counts included."""
    from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32, unpack_from_int32

    g = torch.Generator().manual_seed(1)
    for rows in (8, 13, 40):
        z = torch.randint(0, 16, (rows, 5), generator=g, dtype=torch.uint8)
        ref = pack_to_int32((z.to(torch.int16) - 8).to(torch.int8), 4, packed_dim=0)
        assert torch.equal(pack_rows(z), ref)
        assert torch.equal(unpack_rows(ref, rows), z)
        if rows > 8:  # the package's own unpack fails on a single packed row (a [1, C] transpose's stride)
            assert torch.equal((unpack_from_int32(ref, 4, z.shape, packed_dim=0).to(torch.int16) + 8)
                               .to(torch.uint8), z)


# ---------------------------------------------------------------- errors name the field / tensor


@pytest.fixture(scope="module")
def ct_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ct")
    save_compressed_tensors(folder, 32, False)
    return folder


def _variant(src, dst, edit_config=None, edit_tensors=None):
    os.makedirs(dst)
    with open(os.path.join(src, "config.json")) as f:
        cfg = json.load(f)
    tensors = load_file(os.path.join(src, "model.safetensors"))
    if edit_config:
        edit_config(cfg["quantization_config"])
    if edit_tensors:
        edit_tensors(tensors)
    save_file(tensors, os.path.join(dst, "model.safetensors"))
    with open(os.path.join(dst, "config.json"), "w") as f:
        json.dump(cfg, f)
    return dst


def _weights(qc):
    return qc["config_groups"]["group_0"]["weights"]


@pytest.mark.parametrize("edit,field", [
    (lambda qc: _weights(qc).update(num_bits=8), "weights.num_bits"),
    (lambda qc: _weights(qc).update(strategy="channel", group_size=None), "weights.strategy"),
    (lambda qc: _weights(qc).update(group_size=16), "weights.group_size"),
    (lambda qc: qc["config_groups"]["group_0"].update(input_activations={"num_bits": 8, "type": "int"}),
     "input_activations"),
    (lambda qc: qc.update(config_groups={}), "config_groups"),
])
def test_bad_compressed_tensors_config_names_field(ct_folder, tmp_path, edit, field):
    folder = _variant(ct_folder, str(tmp_path / "bad"), edit_config=edit)
    with pytest.raises(ValueError, match=f"quantization_config.*{field}"):
        load_model(folder, progress=False, device="cpu")


def test_bad_packed_tensor_names_tensor_and_file(ct_folder, tmp_path):
    name = "model.layers.0.self_attn.q_proj.weight_packed"

    def cut(t):
        t[name] = t[name][:, :-1].contiguous()
    folder = _variant(ct_folder, str(tmp_path / "bad"), edit_tensors=cut)
    with pytest.raises(CheckpointError, match=rf"model\.safetensors: tensor '{name}' is int32\[128, 15\], "
                                              r"expected int32\[128, 16\]"):
        load_model(folder, progress=False, device="cpu")


def test_missing_expert_scale_names_tensor(ct_folder, tmp_path):
    name = "model.layers.1.feed_forward.experts.2.down_proj.weight_scale"
    folder = _variant(ct_folder, str(tmp_path / "bad"), edit_tensors=lambda t: t.pop(name))
    with pytest.raises(CheckpointError, match=f"missing tensor '{name}'"):
        load_model(folder, progress=False, device="cpu")


def test_wrong_weight_shape_names_tensor(ct_folder, tmp_path):
    name = "model.layers.0.self_attn.k_proj.weight_shape"
    folder = _variant(ct_folder, str(tmp_path / "bad"),
                      edit_tensors=lambda t: t.update({name: torch.tensor([64, 127])}))
    with pytest.raises(CheckpointError, match=f"'{name}' is \\[64, 127\\]"):
        load_model(folder, progress=False, device="cpu")


@pytest.fixture(scope="module")
def gptq_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gptq")
    save_gptq(folder, 32, False)
    return folder


def test_gptq_act_order_g_idx_refused_naming_tensor(gptq_folder, tmp_path):
    name = "model.layers.0.self_attn.v_proj.g_idx"

    def permute(t):
        t[name] = t[name].flip(0).contiguous()
    folder = _variant(gptq_folder, str(tmp_path / "bad"), edit_config=lambda qc: qc.update(desc_act=True),
                      edit_tensors=permute)
    with pytest.raises(CheckpointError, match=f"tensor '{name}' reorders columns"):
        load_model(folder, progress=False, device="cpu")


def test_gptq_v1_zero_point_16_refused(gptq_folder, tmp_path):
    name = "model.layers.0.self_attn.q_proj.qzeros"
    folder = _variant(gptq_folder, str(tmp_path / "bad"),
                      edit_tensors=lambda t: t.update({name: torch.full_like(t[name], -1)}))  # every nibble 15
    with pytest.raises(CheckpointError, match=f"tensor '{name}' holds a stored zero point 15"):
        load_model(folder, progress=False, device="cpu")


@pytest.mark.parametrize("edit,field", [
    (lambda qc: qc.update(bits=8), "bits"),
    (lambda qc: qc.update(group_size=-1), "group_size"),
    (lambda qc: qc.update(checkpoint_format="marlin"), "checkpoint_format"),
])
def test_bad_gptq_config_names_field(gptq_folder, tmp_path, edit, field):
    folder = _variant(gptq_folder, str(tmp_path / "bad"), edit_config=edit)
    with pytest.raises(ValueError, match=f"quantization_config.{field}"):
        load_model(folder, progress=False, device="cpu")


def test_gptq_sym_with_asymmetric_zeros_refused(gptq_folder, tmp_path):
    folder = _variant(gptq_folder, str(tmp_path / "bad"), edit_config=lambda qc: qc.update(sym=True))
    with pytest.raises(CheckpointError, match=r"qzeros' is not the symmetric zero point 8"):
        load_model(folder, progress=False, device="cpu")


def test_online_quantization_on_int4_checkpoint_refused_for_fp8(ct_folder):
    with pytest.raises(ValueError, match="quantization='fp8' on a pre-quantised int4 checkpoint"):
        load_model(ct_folder, progress=False, device="cpu", quantization="fp8")


def test_language_model_prefixed_names_load(tmp_path):
    """Published multimodal w4a16 checkpoints name text tensors `language_model.model.layers...`."""
    src = tmp_path / "src"
    hf = save_compressed_tensors(src, 128, True)
    folder = _variant(src, str(tmp_path / "prefixed"),
                      edit_tensors=lambda t: t.update({f"language_model.{k}": t.pop(k) for k in list(t)}))
    _check(folder, hf, 128, False)
