"""FP8 checkpoints: `convert` round trips (fn/fnuz, per channel/128x128 blocks, sharded, refuses to
overwrite, verification catches corruption), pre-quantised per-expert layouts with weight_scale tensors
(compressed-tensors-like and fbgemm-like configs), ignore lists, loaded KV scales, `info --model`."""
import contextlib
import io
import json
import os

import pytest
import torch
from safetensors.torch import save_file

from amd_llama4 import CheckpointError, load_model, ops
from amd_llama4.cli import main
from amd_llama4.config import QuantConfig
from amd_llama4.model.multimodal import is_vision_param
from amd_llama4.tools import checkpoint_convert as conv
from amd_llama4.tools.checkpoint_convert import checkpoint_tensors, convert_checkpoint, verify_checkpoint
from amd_llama4.quant.fp8 import FP8Experts, FP8Linear

IDS = torch.randint(5, 500, (2, 41), generator=torch.Generator().manual_seed(0))
FN = QuantConfig(method="fp8", fp8_format="e4m3fn")


def _cli(*argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(list(argv))
    return rc, out.getvalue(), err.getvalue()


def _deq_params(model):
    out = {}
    for n, m in model.named_modules():
        if isinstance(m, FP8Linear):
            out[n] = ops.dequantize_fp8(m.weight, m.weight_scale, m.block)
        elif isinstance(m, FP8Experts):
            out[n + ".gate_up"] = ops.dequantize_fp8(m.gate_up_proj, m.gate_up_proj_scale)
            out[n + ".down"] = ops.dequantize_fp8(m.down_proj, m.down_proj_scale)
    return out


@pytest.fixture(scope="module")
def fn_ckpt(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("c") / "fn")
    rc, text, _ = _cli("convert", "--model", "tiny-maverick", "--out", out, "--fp8", "fn", "--max-shard-size", "300KB",
                       "--dtype", "float32", "--no-progress")
    assert rc == 0 and "verified" in text
    return out


def test_convert_fn_per_channel_round_trips(fn_ckpt):
    index = json.load(open(os.path.join(fn_ckpt, "model.safetensors.index.json")))
    assert len(set(index["weight_map"].values())) >= 3
    qc = json.load(open(os.path.join(fn_ckpt, "config.json")))["quantization_config"]
    assert qc["quant_method"] == "fbgemm_fp8" and qc["fmt"] == "e4m3fn"
    got = load_model(fn_ckpt, progress=False, quantization=FN)
    want = load_model("tiny-maverick", quantization=FN)
    assert isinstance(got.model.layers[0].self_attn.q_proj, FP8Linear)
    torch.testing.assert_close(got(IDS), want(IDS), rtol=0, atol=0)


def test_convert_fnuz_block_is_exact_and_round_trips(tmp_path, fn_ckpt):
    fn_b, fnuz_b = str(tmp_path / "fn_b"), str(tmp_path / "fnuz_b")
    convert_checkpoint("tiny-scout", fn_b, "e4m3fn", block=128, max_shard_size="400KB", progress=False)
    convert_checkpoint(fn_b, fnuz_b, "e4m3fnuz", block=128, max_shard_size="400KB", progress=False)  # re-format
    wm = json.load(open(os.path.join(fnuz_b, "model.safetensors.index.json")))["weight_map"]
    assert "model.layers.0.self_attn.q_proj.weight_scale_inv" in wm  # HF fine-grained naming for block scales
    qc = json.load(open(os.path.join(fnuz_b, "config.json")))["quantization_config"]
    assert qc["weight_block_size"] == [128, 128] and qc["fmt"] == "e4m3fnuz" and qc["quant_method"] == "fp8"
    fnuz_q = QuantConfig(method="fp8", fp8_format="e4m3fnuz", weight_block=(128, 128))
    a = load_model(fn_b, progress=False, quantization=QuantConfig(method="fp8", fp8_format="e4m3fn"))
    b = load_model(fnuz_b, progress=False, quantization=fnuz_q)
    assert b.model.layers[0].self_attn.q_proj.weight.dtype == torch.float8_e4m3fnuz
    assert b.model.layers[0].self_attn.q_proj.block == (128, 128)
    da, db = _deq_params(a), _deq_params(b)
    assert da.keys() == db.keys()
    for n in da:
        assert torch.equal(da[n], db[n]), n  # fn -> fnuz re-expressed exactly
    block_fn = QuantConfig(method="fp8", fp8_format="e4m3fn", weight_block=(128, 128))
    online = load_model("tiny-scout", quantization=block_fn)
    for n, t in _deq_params(online).items():
        assert torch.equal(t, da[n]), n
    assert torch.isfinite(b(IDS)).all()
    # also straight from a preset to fnuz, and the --block mismatch on an FP8 source is refused
    with pytest.raises(ValueError, match="requantisation"):
        convert_checkpoint(fn_ckpt, str(tmp_path / "x"), "e4m3fnuz", block=128, progress=False)


def test_convert_refuses_to_overwrite(fn_ckpt, tmp_path):
    before = sorted(os.listdir(fn_ckpt))
    rc, _, err = _cli("convert", "--model", "tiny-scout", "--out", fn_ckpt, "--fp8", "fnuz", "--no-progress")
    assert rc == 1 and "refusing to overwrite" in err and sorted(os.listdir(fn_ckpt)) == before
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileExistsError):
        convert_checkpoint("tiny-scout", str(empty), "e4m3fn", progress=False)


def _flip_last_byte(path):
    with open(path, "r+b") as f:
        f.seek(-1, os.SEEK_END)
        b = f.read(1)
        f.seek(-1, os.SEEK_END)
        f.write(bytes([b[0] ^ 0x01]))


def test_verify_catches_a_corrupted_shard(fn_ckpt, tmp_path, monkeypatch):
    import shutil

    copy = str(tmp_path / "copy")
    shutil.copytree(fn_ckpt, copy)
    verify_checkpoint(copy)
    shard = sorted(f for f in os.listdir(copy) if f.startswith("model-00002-of-"))[0]
    _flip_last_byte(os.path.join(copy, shard))
    with pytest.raises(CheckpointError, match="model-00002-of-.*sha256"):
        verify_checkpoint(copy)

    # corrupted while writing (after the bytes left us, before the hash): the bit-for-bit comparison
    # fails, convert raises and leaves neither the output nor its temporary folder
    real = conv._write_shard

    def corrupting(tensors, path):
        real(tensors, path)
        if "model-00002-of-" in path:
            _flip_last_byte(path)

    monkeypatch.setattr(conv, "_write_shard", corrupting)
    out = str(tmp_path / "bad")
    with pytest.raises(CheckpointError, match="differs from what was written"):
        convert_checkpoint("tiny-scout", out, "e4m3fn", max_shard_size="400KB", progress=False)
    assert not os.path.exists(out) and not os.path.exists(out + ".partial")


def _t_bytes(t):  # transpose for float8 (no CPU kernel): through the raw bytes
    return t.view(torch.uint8).t().contiguous().view(t.dtype) if t.element_size() == 1 else t.t().contiguous()


def _per_expert_checkpoint(model, folder, config_qc, keep_hp=()):
    """The FP8 model's tensors in the per-expert [out, in] layout with `.weight_scale` [out, 1], under
    `language_model.`, plus modules named in keep_hp written in high precision."""
    os.makedirs(folder)
    tensors = {}
    for name, t in checkpoint_tensors(model, torch.float32).items():
        if ".experts." in name or is_vision_param(name):
            continue
        tensors["language_model." + name] = t
    for n, m in model.named_modules():
        if isinstance(m, FP8Experts):
            inter = m.down_proj.shape[1]
            for e in range(m.gate_up_proj.shape[0]):
                gu, gus = m.gate_up_proj[e].view(torch.uint8), m.gate_up_proj_scale[e]
                parts = {"gate_proj": (gu[:, :inter], gus[:, :inter]), "up_proj": (gu[:, inter:], gus[:, inter:]),
                         "down_proj": (m.down_proj[e].view(torch.uint8), m.down_proj_scale[e])}
                for p, (w, s) in parts.items():
                    tensors[f"language_model.{n}.{e}.{p}.weight"] = _t_bytes(w.view(m.gate_up_proj.dtype))
                    tensors[f"language_model.{n}.{e}.{p}.weight_scale"] = s.t().contiguous()
    for name, w in keep_hp:
        tensors.pop(f"language_model.{name}.weight_scale")
        tensors[f"language_model.{name}.weight"] = w
    save_file(tensors, os.path.join(folder, "model.safetensors"))
    cfg = model.config.to_hf_dict()
    cfg = {"model_type": "llama4", "text_config": cfg, "quantization_config": config_qc}
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(cfg, f)


@pytest.mark.parametrize("qc", [
    {"quant_method": "compressed-tensors", "format": "float-quantized",
     "ignore": ["lm_head", "re:.*router", "re:.*layers\\.1\\.self_attn\\.k_proj"]},
    {"quant_method": "fbgemm_fp8", "activation_scale_ub": 1200.0,
     "modules_to_not_convert": ["lm_head", "language_model.model.layers.1.self_attn.k_proj"]},
], ids=["compressed-tensors", "fbgemm"])
def test_pre_quantised_per_expert_layout_and_ignore_list(tmp_path, qc):
    ignored = "model.layers.1.self_attn.k_proj"
    want = load_model("tiny-scout", quantization=QuantConfig(method="fp8", fp8_format="e4m3fn", ignore=[ignored]))
    hp = load_model("tiny-scout").get_submodule(ignored).weight.detach()
    assert isinstance(want.get_submodule(ignored), torch.nn.Linear)  # high precision (FP8Linear is no nn.Linear)
    folder = str(tmp_path / "ck")
    src = load_model("tiny-scout", quantization=FN)
    _per_expert_checkpoint(src, folder, qc, keep_hp=[(ignored, hp)])
    got = load_model(folder, progress=False, quantization=FN)
    assert isinstance(got.get_submodule(ignored), torch.nn.Linear)  # honoured: loaded in high precision
    assert isinstance(got.model.layers[1].self_attn.q_proj, FP8Linear)
    assert isinstance(got.model.layers[2].feed_forward.experts, FP8Experts)
    torch.testing.assert_close(got(IDS), want(IDS), rtol=0, atol=0)
    # without the ignore entry the high-precision tensor does not fit an FP8 module: loud error
    qc2 = dict(qc, ignore=["lm_head"], modules_to_not_convert=["lm_head"])
    _per_expert_checkpoint(src, str(tmp_path / "ck2"), qc2, keep_hp=[(ignored, hp)])
    with pytest.raises(CheckpointError, match="k_proj"):
        load_model(str(tmp_path / "ck2"), progress=False)


def test_loaded_kv_scales_are_used(tmp_path):
    from amd_llama4.tools.quant_accuracy import teacher_forced_logits

    m = load_model("tiny-scout", quantization=FN)
    folder = str(tmp_path / "kv")
    os.makedirs(folder)
    tensors = checkpoint_tensors(m, torch.float32)
    for i in range(4):
        tensors[f"model.layers.{i}.self_attn.k_scale"] = torch.tensor([0.01 * (i + 1), 0.02])  # per KV head
        tensors[f"model.layers.{i}.self_attn.v_scale"] = torch.tensor(0.003)  # per tensor
    save_file(tensors, os.path.join(folder, "model.safetensors"))
    cfg = m.config.to_hf_dict()
    cfg["quantization_config"] = {"quant_method": "fp8", "fmt": "e4m3fn"}
    json.dump(cfg, open(os.path.join(folder, "config.json"), "w"))
    got = load_model(folder, progress=False)
    assert torch.equal(got.kv_scales[2]["k"], torch.tensor([0.03, 0.02]))
    from amd_llama4.engine.kv_cache import KVCache

    cache = KVCache(got.config, 8, 16, torch.float32, "cpu", "fp8", "e4m3fn", got.kv_scales)
    assert torch.equal(cache.scales[2], torch.tensor([[0.03, 0.02], [0.003, 0.003]]))
    # and they change the result against computed scales (so they are really applied)
    ids = list(range(5, 45))
    a = teacher_forced_logits(got, ids, kv_cache_dtype="fp8")
    got.kv_scales = None
    b = teacher_forced_logits(got, ids, kv_cache_dtype="fp8")
    assert torch.isfinite(a).all() and not torch.equal(a, b)
    # a re-conversion carries them along
    out = str(tmp_path / "kv2")
    convert_checkpoint(folder, out, "e4m3fnuz", progress=False)
    assert torch.equal(load_model(out, progress=False).kv_scales[0]["v"], torch.tensor([0.003]))


def test_info_model_bytes_match_hand_count():
    H, L, NH, KVH, D, I, E, V = 128, 4, 4, 2, 32, 96, 8, 512  # tiny-scout: every layer MoE, untied embeddings
    attn = (NH * D * H + 2 * KVH * D * H + H * NH * D)  # q, k, v, o
    attn_scales = NH * D + 2 * KVH * D + H  # fp32 per output channel
    experts, experts_scales = E * H * 2 * I + E * I * H, E * 2 * I + E * H
    shared, shared_scales = 3 * H * I, 2 * I + H
    rc, text, _ = _cli("info", "--model", "tiny-scout", "--quantization", "fp8", "--json")
    assert rc == 0
    rep = json.loads(text)
    w = rep["weights"]
    assert w["attention"] == L * (attn + 4 * attn_scales)
    assert w["experts"] == L * (experts + 4 * experts_scales)
    assert w["shared_expert"] == L * (shared + 4 * shared_scales)
    assert w["dense_mlp"] == 0 and w["router"] == L * H * E * 2  # bf16
    assert w["embeddings"] == 2 * V * H * 2 and w["norms"] == (2 * L + 1) * H * 2
    assert w["total"] == sum(v for k, v in w.items() if k != "total")
    assert rep["kv"]["kv_bytes_per_token"] == L * 2 * KVH * (D * 1 + 4)  # fp8 values + a scale per token/head
    assert rep["kv"]["kv_bytes_per_token_global_layers"] == 1 * 2 * KVH * (D + 4)  # one NoPE layer in 4
    rc, text, _ = _cli("info", "--model", "tiny-scout", "--json")
    w = json.loads(text)["weights"]
    assert w["attention"] == L * attn * 2 and w["experts"] == L * experts * 2
    assert json.loads(text)["kv"]["kv_bytes_per_token"] == L * 2 * KVH * D * 2
    rc, text, _ = _cli("info", "--model", "tiny-scout", "--quantization", "fp8")
    assert rc == 0 and "experts" in text and "bytes/token" in text
    rc, text, _ = _cli("info")
    assert rc == 0 and "fp8" in text.lower()  # the platform report is unchanged


def test_fn_checkpoint_loads_as_fnuz_on_gfx942(fn_ckpt, monkeypatch):
    """On MI300 (platform format e4m3fnuz) an e4m3fn release is converted at load, exactly."""
    import amd_llama4.quant.fp8 as fp8

    want = _deq_params(load_model(fn_ckpt, progress=False))
    monkeypatch.setattr(fp8, "fp8_format", lambda: "e4m3fnuz")
    got_model = load_model(fn_ckpt, progress=False)
    assert got_model.model.layers[0].self_attn.q_proj.weight.dtype == torch.float8_e4m3fnuz
    assert got_model.model.layers[1].feed_forward.experts.down_proj.dtype == torch.float8_e4m3fnuz
    got = _deq_params(got_model)
    for n in want:
        assert torch.equal(want[n], got[n]), n
    assert torch.isfinite(got_model(IDS)).all()
