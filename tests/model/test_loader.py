"""Loader: shards, `language_model.` prefixes, per-expert layout, nested configs; every malformed
checkpoint fails with a message naming the tensor and the file."""
import json
import os
import struct

import pytest
import torch
from safetensors.torch import load_file, save_file

from amd_llama4 import CheckpointError, Llama4Config, load_model
from tests.hf_reference import save_hf

CFG = dict(vocab_size=61, hidden_size=32, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
           intermediate_size=24, intermediate_size_mlp=40, num_hidden_layers=4, num_local_experts=4,
           num_experts_per_tok=1, interleave_moe_layer_step=2, attention_chunk_size=4, floor_scale=2,
           bos_token_id=1, eos_token_id=2, pad_token_id=0, rope_scaling=None)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An HF checkpoint folder and the logits it should produce."""
    folder = tmp_path_factory.mktemp("ref")
    hf = save_hf(Llama4Config(**CFG), folder, seed=3)
    ids = torch.randint(0, CFG["vocab_size"], (2, 11), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return folder, ids, hf(ids).logits


def _tensors(folder):
    return load_file(os.path.join(folder, "model.safetensors"))


def _write(folder, tensors, config):
    os.makedirs(folder, exist_ok=True)
    save_file(tensors, os.path.join(folder, "model.safetensors"))
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config, f)


def _config(folder):
    with open(os.path.join(folder, "config.json")) as f:
        return json.load(f)


def _check(folder, reference):
    _, ids, want = reference
    torch.testing.assert_close(load_model(folder, progress=False)(ids), want, atol=1e-4, rtol=0)


def test_sharded(tmp_path, reference):
    save_hf(Llama4Config(**CFG), tmp_path, seed=3, max_shard_size="20KB")
    index = json.load(open(tmp_path / "model.safetensors.index.json"))
    assert len(set(index["weight_map"].values())) >= 3
    _check(tmp_path, reference)


def test_language_model_prefix_and_nested_config(tmp_path, reference):
    folder = reference[0]
    tensors = {f"language_model.{k}": v for k, v in _tensors(folder).items()}
    tensors["vision_model.patch_embedding.weight"] = torch.zeros(2, 2)  # other modality: ignored
    nested = {"model_type": "llama4", "text_config": _config(folder), "vision_config": {}}
    nested["text_config"]["attn_temperature_tuning"] = 4  # released configs store an int
    _write(tmp_path, tensors, nested)
    _check(tmp_path, reference)


def test_per_expert_layout(tmp_path, reference):
    folder = reference[0]
    tensors, out = _tensors(folder), {}
    for k, v in tensors.items():
        if k.endswith("experts.gate_up_proj"):  # [E, H, 2I] -> per expert [I, H] (nn.Linear [out, in])
            inter = v.shape[-1] // 2
            for e in range(v.shape[0]):
                out[k.replace("gate_up_proj", f"{e}.gate_proj.weight")] = v[e, :, :inter].t().contiguous()
                out[k.replace("gate_up_proj", f"{e}.up_proj.weight")] = v[e, :, inter:].t().contiguous()
        elif k.endswith("experts.down_proj"):  # [E, I, H] -> per expert [H, I]
            for e in range(v.shape[0]):
                out[k.replace("down_proj", f"{e}.down_proj.weight")] = v[e].t().contiguous()
        else:
            out[k] = v
    _write(tmp_path, out, _config(folder))
    _check(tmp_path, reference)


def _broken(tmp_path, reference, edit):
    folder = reference[0]
    tensors = _tensors(folder)
    edit(tensors)
    _write(tmp_path, tensors, _config(folder))
    return tmp_path


def test_missing_tensor_named(tmp_path, reference):
    name = "model.layers.1.feed_forward.experts.down_proj"
    folder = _broken(tmp_path, reference, lambda t: t.pop(name))
    with pytest.raises(CheckpointError, match=rf"missing tensor '{name}'"):
        load_model(folder, progress=False)


def test_wrong_shape_named_with_file(tmp_path, reference):
    name = "model.layers.2.self_attn.q_proj.weight"
    folder = _broken(tmp_path, reference, lambda t: t.__setitem__(name, torch.zeros(3, 3)))
    with pytest.raises(CheckpointError, match=rf"model\.safetensors: tensor '{name}' has shape \[3, 3\], expected"):
        load_model(folder, progress=False)


def test_wrong_dtype_named(tmp_path, reference):
    name = "model.layers.0.input_layernorm.weight"
    folder = _broken(tmp_path, reference, lambda t: t.__setitem__(name, t[name].to(torch.int32)))
    with pytest.raises(CheckpointError, match=rf"model\.safetensors: tensor '{name}' has dtype torch.int32, expected a "
                                              "floating-point dtype"):
        load_model(folder, progress=False)


def test_unexpected_tensor_named(tmp_path, reference):
    folder = _broken(tmp_path, reference, lambda t: t.__setitem__("model.layers.9.mystery.weight", torch.zeros(1)))
    with pytest.raises(CheckpointError, match=r"unexpected tensor 'model\.layers\.9\.mystery\.weight'"):
        load_model(folder, progress=False)


def test_truncated_file(tmp_path, reference):
    folder = _broken(tmp_path, reference, lambda t: None)
    path = folder / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 100])
    with pytest.raises(CheckpointError, match=r"model\.safetensors: truncated file: tensor '.*' ends at byte"):
        load_model(folder, progress=False)


def test_oversized_and_garbage_headers(tmp_path, reference):
    folder = _broken(tmp_path, reference, lambda t: None)
    path = folder / "model.safetensors"
    path.write_bytes(struct.pack("<Q", 1 << 40) + b"{}")
    with pytest.raises(CheckpointError, match="header length .* exceeds"):
        load_model(folder, progress=False)
    path.write_bytes(struct.pack("<Q", 4) + b"nope")
    with pytest.raises(CheckpointError, match="header is not valid JSON"):
        load_model(folder, progress=False)
    path.write_bytes(b"abc")
    with pytest.raises(CheckpointError, match="truncated file"):
        load_model(folder, progress=False)


def test_shard_index_names_missing_file(tmp_path, reference):
    save_hf(Llama4Config(**CFG), tmp_path, seed=3, max_shard_size="20KB")
    victim = sorted(p for p in os.listdir(tmp_path) if p.endswith(".safetensors"))[1]
    os.remove(tmp_path / victim)
    with pytest.raises(CheckpointError, match=f"lists shard '{victim}', which does not exist"):
        load_model(tmp_path, progress=False)


def test_no_pickle_checkpoints(tmp_path, reference):
    _write(tmp_path, {}, _config(reference[0]))
    os.remove(tmp_path / "model.safetensors")
    torch.save({"x": torch.zeros(1)}, tmp_path / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="no .safetensors files"):
        load_model(tmp_path, progress=False)


def test_config_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        Llama4Config.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text('{"model_type": "llama", "hidden_size": 8}')
    with pytest.raises(ValueError, match="not a Llama 4 model"):
        Llama4Config.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="num_key_value_heads"):
        Llama4Config(num_attention_heads=6, num_key_value_heads=4)
