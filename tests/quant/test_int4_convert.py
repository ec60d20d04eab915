"""int4 online quantisation (`quantization="int4"`), QuantConfig's int4 fields, and
`amd-llama4 convert --to int4`: a compressed-tensors pack-quantized checkpoint that the compressed-tensors
package itself decompresses to our dequantised weights and that our loader reads back."""
import json
import os

import pytest
import torch
from safetensors.torch import load_file

from amd_llama4 import QuantConfig, load_model
from amd_llama4.commands._engine_flags import add_engine_flags, engine_kwargs
from amd_llama4.config import Llama4Config
from amd_llama4.ops.int4 import dequantize_int4
from amd_llama4.tools.int4_convert import convert_checkpoint_int4
from amd_llama4.quant.int4 import Int4Experts, Int4Linear, quantize_model_int4
from tests.hf_reference import save_hf
from tests.quant.int4_fixtures import CFG

IDS = torch.tensor([[1, 17, 53, 5, 25, 7, 31]])


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    """A small random transformers checkpoint (layer 0 dense, layer 1 MoE; widths multiples of 128)."""
    folder = str(tmp_path_factory.mktemp("hf"))
    save_hf(Llama4Config(**CFG), folder, seed=5)
    return folder


@pytest.mark.parametrize("kw,field", [
    (dict(group_size=48), "QuantConfig.group_size"), (dict(group_size=True), "QuantConfig.group_size"),
    (dict(zero_point="yes"), "QuantConfig.zero_point"), (dict(weight_block=(128, 128)), "QuantConfig.weight_block"),
])
def test_quant_config_int4_validation_names_field(kw, field):
    with pytest.raises(ValueError, match=field):
        QuantConfig(method="int4", **kw)
    with pytest.raises(ValueError, match="QuantConfig.method"):
        QuantConfig(method="int3")


def test_online_load_equals_quantising_the_loaded_model(hf_folder):
    """quantization=QuantConfig(int4) while loading (expert by expert from the source) == quantize_model_int4
    on the loaded fp32 model, bit for bit."""
    q = QuantConfig(method="int4", group_size=32, zero_point=True)
    online = load_model(hf_folder, device="cpu", progress=False, quantization=q)
    after = quantize_model_int4(load_model(hf_folder, device="cpu", progress=False), q)
    assert isinstance(online.model.layers[1].feed_forward.experts, Int4Experts)
    assert isinstance(online.model.layers[0].feed_forward.down_proj, Int4Linear)
    sd_a, sd_b = online.state_dict(), after.state_dict()
    assert sd_a.keys() == sd_b.keys()
    for n in sd_a:
        assert torch.equal(sd_a[n], sd_b[n]), n
    torch.testing.assert_close(online(IDS), after(IDS), atol=0, rtol=0)


def test_online_int4_string_is_group_128_symmetric():
    m = load_model("tiny-scout", seed=0, device="meta", progress=False, quantization="int4")
    q_proj = m.model.layers[0].self_attn.q_proj
    assert (m.quant_config.group_size, m.quant_config.zero_point) == (128, False)
    assert isinstance(q_proj, Int4Linear) and q_proj.zeros is None and q_proj.qweight.shape == (128, 64)


def test_engine_flag_accepts_int4():
    import argparse

    p = argparse.ArgumentParser()
    add_engine_flags(p)
    assert engine_kwargs(p.parse_args(["--quantization", "int4"]))["quantization"] == "int4"


@pytest.fixture(scope="module")
def converted(tmp_path_factory, hf_folder):
    out = str(tmp_path_factory.mktemp("conv") / "int4")
    convert_checkpoint_int4(hf_folder, out, group_size=32, zero_point=True, max_shard_size="100KB", progress=False)
    return out


def test_convert_writes_compressed_tensors_that_the_package_reads(converted):
    pytest.importorskip("compressed_tensors")
    from compressed_tensors.compressors.pack_quantized.base import PackedQuantizationCompressor
    from compressed_tensors.quantization import QuantizationConfig

    with open(os.path.join(converted, "config.json")) as f:
        qc = QuantizationConfig.model_validate(json.load(f)["quantization_config"])
    scheme = qc.config_groups["group_0"]
    assert qc.format == "pack-quantized" and scheme.weights.group_size == 32 and not scheme.weights.symmetric
    tensors = {}
    for f in sorted(os.listdir(converted)):
        if f.endswith(".safetensors"):
            tensors.update(load_file(os.path.join(converted, f)))
    assert "model.layers.1.feed_forward.experts.3.down_proj.weight_packed" in tensors
    assert "model.layers.1.feed_forward.router.weight" in tensors
    assert "model.layers.1.feed_forward.router" in qc.ignore and "lm_head" in qc.ignore
    model = load_model(converted, device="cpu", progress=False, dtype=torch.float32)
    checked = 0
    for base, mod, rows in (("model.layers.1.self_attn.k_proj", "model.layers.1.self_attn.k_proj", None),
                            ("model.layers.1.feed_forward.experts.2.up_proj", "model.layers.1.feed_forward.experts",
                             (2, "w13", slice(128, 256))),
                            ("model.layers.1.feed_forward.experts.0.down_proj", "model.layers.1.feed_forward.experts",
                             (0, "w2", slice(None)))):
        sd = {k.removeprefix(base + "."): v for k, v in tensors.items() if k.startswith(base + ".")}
        sd["weight_scale"] = sd["weight_scale"].float()
        theirs = PackedQuantizationCompressor.decompress(sd, scheme)["weight"]
        m = model.get_submodule(mod)
        if rows is None:
            ours = dequantize_int4(m.qweight, m.scales, m.zeros, 32)
        else:
            e, w, r = rows
            ours = dequantize_int4(getattr(m, f"{w}_q")[e, r], getattr(m, f"{w}_s")[e, r],
                                   getattr(m, f"{w}_z")[e, r], 32)
        torch.testing.assert_close(theirs.float(), ours, atol=0, rtol=0)
        checked += 1
    assert checked == 3


def test_convert_round_trip_logits(converted, hf_folder):
    """Read back == the online int4 model with its scales (and other weights) rounded to bf16 (as written)."""
    q = QuantConfig(method="int4", group_size=32, zero_point=True)
    online = load_model(hf_folder, device="cpu", progress=False, quantization=q)
    with torch.no_grad():
        for p in online.parameters():
            if p.is_floating_point():
                p.copy_(p.to(torch.bfloat16))
    back = load_model(converted, device="cpu", progress=False, dtype=torch.float32)
    torch.testing.assert_close(back(IDS), online(IDS), atol=1e-5, rtol=1e-5)


def test_convert_cli_and_refusals(converted, hf_folder, tmp_path):
    from amd_llama4.cli import main

    out = str(tmp_path / "cli")
    assert main(["convert", "--model", hf_folder, "--out", out, "--to", "int4", "--no-progress"]) == 0
    with open(os.path.join(out, "config.json")) as f:
        w = json.load(f)["quantization_config"]["config_groups"]["group_0"]["weights"]
    assert (w["group_size"], w["symmetric"]) == (128, True)
    assert main(["convert", "--model", hf_folder, "--out", out, "--to", "int4", "--no-progress"]) == 1  # exists
    with pytest.raises(ValueError, match="already int4 with group_size=32"):
        convert_checkpoint_int4(converted, str(tmp_path / "again"), group_size=128, progress=False)


def test_memory_report_int4_scout():
    """Scout's released shapes in int4 group 128 (meta device): the routed experts are 4 bits a weight plus
    a bf16 scale per 128; the whole model fits one 80 GB GPU, as Meta's launch promised."""
    from amd_llama4.config import preset
    from amd_llama4.tools.quant_memory import memory_report

    cfg = preset("scout")
    r = memory_report("scout", torch.bfloat16, "int4")
    H, inter, E, L = cfg.hidden_size, cfg.intermediate_size, cfg.num_local_experts, len(cfg.moe_layers)
    per_expert = 3 * H * inter // 2 + 3 * H * inter // 128 * 2
    assert r["quantized"] and r["weights"]["experts"] == L * E * per_expert
    assert r["weights"]["total"] < 60 * 2 ** 30
