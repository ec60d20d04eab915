"""Meta's `fbgemm_fp8` layout (Llama-4-Maverick-17B-128E-Instruct-FP8) at tiny shapes: tensors with the
names, shapes and dtypes of transformers' FbgemmFp8Linear / FbgemmFp8Llama4TextExperts (instantiated
here), quantised as fbgemm's quantize_fp8_per_row does; loaded exactly, logits against the
dequantised transformers model; and our writer's fbgemm output round trip."""
import json
import os

import pytest
import torch
from safetensors.torch import load_file, save_file

from amd_llama4 import Llama4Config, load_model, ops
from amd_llama4.config import QuantConfig
from amd_llama4.parallel.tp import Parallel
from amd_llama4.tools.checkpoint_convert import write_checkpoint
from amd_llama4.quant.fp8 import FP8Experts, FP8Linear
from tests.hf_reference import hf_model

fbgemm_fp8 = pytest.importorskip("transformers.integrations.fbgemm_fp8")

CFG = Llama4Config(vocab_size=67, hidden_size=48, num_attention_heads=4, num_key_value_heads=2, head_dim=12,
                   intermediate_size=40, intermediate_size_mlp=56, num_hidden_layers=4, num_local_experts=4,
                   num_experts_per_tok=1, interleave_moe_layer_step=2, attention_chunk_size=4, floor_scale=2,
                   bos_token_id=1, eos_token_id=2, pad_token_id=0, rope_scaling=None)
# As the release: attention of layer 0, routers, lm_head in bf16 (here fp32); the rest fp8.
NOT_CONVERTED = ["language_model.model.layers.0.self_attn", "language_model.model.layers.1.feed_forward.router",
                 "language_model.model.layers.3.feed_forward.router", "language_model.lm_head"]
IDS = torch.randint(0, 67, (2, 13), generator=torch.Generator().manual_seed(0))
FP8_MAX = 448.0


def per_row(x: torch.Tensor):
    """fbgemm's quantize_fp8_per_row on the last dim: scale = amax / 448, saturating cast."""
    scale = x.abs().amax(-1, keepdim=True).clamp(min=1e-12) / FP8_MAX
    return (x / scale).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn), scale


def _converted(name: str) -> bool:
    return not any(name == p or name.startswith(p + ".") for p in NOT_CONVERTED)


def fbgemm_checkpoint(folder):
    """(hf model with the dequantised weights, {name: tensor} written) in the fbgemm layout."""
    hf = hf_model(CFG, seed=5)
    text_cfg = hf.config
    sd, out = hf.state_dict(), {}
    for name, mod in hf.named_modules():
        full = "language_model." + name
        if type(mod).__name__ == "Llama4TextExperts" and _converted(full):
            ref = fbgemm_fp8.FbgemmFp8Llama4TextExperts(text_cfg)  # the names, shapes, dtypes to fill
            gu_q, gu_s = per_row(mod.gate_up_proj.detach().transpose(1, 2))  # [E, 2I, H]: per output column
            dn_q, dn_s = per_row(mod.down_proj.detach().transpose(1, 2))  # [E, H, I]
            vals = {"gate_up_proj": gu_q.transpose(1, 2), "gate_up_proj_scale": gu_s.transpose(1, 2),
                    "down_proj": dn_q.transpose(1, 2), "down_proj_scale": dn_s}
            for k, p in ref.state_dict().items():
                assert vals[k].shape == p.shape and vals[k].dtype == p.dtype, k
                out[f"{full}.{k}"] = vals[k].contiguous()
            with torch.no_grad():
                mod.gate_up_proj.copy_(gu_q.float().transpose(1, 2) * gu_s.transpose(1, 2))
                mod.down_proj.copy_(dn_q.float().transpose(1, 2) * dn_s.transpose(1, 2))
        elif isinstance(mod, torch.nn.Linear) and _converted(full) and (
                ".self_attn." in full or ".feed_forward." in full):
            ref = fbgemm_fp8.FbgemmFp8Linear(mod.in_features, mod.out_features, False)
            q, s = per_row(mod.weight.detach())
            vals = {"weight": q, "weight_scale": s}
            for k, p in ref.state_dict().items():  # input_scale_ub is not persistent: not in the file
                assert vals[k].shape == p.shape and vals[k].dtype == p.dtype, k
                out[f"{full}.{k}"] = vals[k]
            with torch.no_grad():
                mod.weight.copy_(q.float() * s)
    for k, v in sd.items():
        base = k.rsplit(".", 1)[0]
        if not any(o.startswith(f"language_model.{base}.") for o in out) and f"language_model.{k}" not in out:
            out[f"language_model.{k}"] = v.contiguous()
    os.makedirs(folder)
    save_file(out, os.path.join(folder, "model.safetensors"))
    cfg = {"model_type": "llama4", "text_config": CFG.to_hf_dict(),
           "quantization_config": {"quant_method": "fbgemm_fp8", "activation_scale_ub": 1200.0,
                                   "modules_to_not_convert": NOT_CONVERTED}}
    json.dump(cfg, open(os.path.join(folder, "config.json"), "w"))
    return hf, out


def qdq(x: torch.Tensor) -> torch.Tensor:
    """fbgemm's dynamic per-token activation quantisation (scale bounded by activation_scale_ub), undone."""
    x2 = x.reshape(-1, x.shape[-1]).float()
    scale = x2.abs().amax(-1, keepdim=True).clamp(1e-12, 1200.0) / FP8_MAX
    q = (x2 / scale).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    return (q.float() * scale).reshape(x.shape).to(x.dtype)


def fbgemm_reference(hf):
    """The dequantised transformers model computing as FbgemmFp8Linear / FbgemmFp8Llama4TextExperts do:
    every converted product takes fp8 per-token activations."""
    for name, mod in hf.named_modules():
        full = "language_model." + name
        if not _converted(full):
            continue
        if type(mod).__name__ == "Llama4TextExperts":
            def experts(hidden, mod=mod):  # hidden: [E * T, H], routed input
                h = hidden.view(mod.num_experts, -1, hidden.shape[-1])
                gate, up = torch.bmm(qdq(h), mod.gate_up_proj).chunk(2, dim=-1)
                return torch.bmm(qdq(up * torch.nn.functional.silu(gate)), mod.down_proj).view(-1, h.shape[-1])
            mod.forward = experts
        elif isinstance(mod, torch.nn.Linear) and (".self_attn." in full or ".feed_forward." in full):
            mod.register_forward_pre_hook(lambda m, args: (qdq(args[0]),))
    return hf


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("fb") / "ck")
    hf, tensors = fbgemm_checkpoint(folder)
    return folder, hf, tensors


def test_fbgemm_release_loads_exactly(release):
    folder, hf, tensors = release
    m = load_model(folder, device="cpu", progress=False)
    experts = m.model.layers[1].feed_forward.experts
    assert isinstance(experts, FP8Experts) and isinstance(m.model.layers[1].self_attn.q_proj, FP8Linear)
    assert type(m.model.layers[0].self_attn.q_proj).__name__ == "Linear"  # modules_to_not_convert
    assert type(m.model.layers[1].feed_forward.router).__name__ == "Linear"
    # the weights are the checkpoint's, bit for bit (the down scales re-laid from [E, H, 1])
    p = "language_model.model.layers.1.feed_forward.experts."
    assert torch.equal(experts.down_proj.view(torch.uint8), tensors[p + "down_proj"].view(torch.uint8))
    assert torch.equal(experts.down_proj_scale, tensors[p + "down_proj_scale"].transpose(1, 2))
    assert torch.equal(experts.gate_up_proj_scale, tensors[p + "gate_up_proj_scale"])
    # logits: the dequantised transformers model with fbgemm's per-token fp8 activations
    with torch.no_grad():
        want = fbgemm_reference(hf)(IDS).logits
    got = m(IDS)
    err = (got - want).norm() / want.norm()
    assert err < 1e-4, err  # measured 2e-7 (fp32 activations: 0.063; down scales in reverse order: 0.093)


def test_fbgemm_release_expert_parallel_slices(release):
    folder = release[0]
    full = load_model(folder, device="cpu", progress=False).model.layers[3].feed_forward.experts
    for rank in range(2):
        part = load_model(folder, device="cpu", progress=False,
                          parallel=Parallel(rank, 2, expert_parallel=True)).model.layers[3].feed_forward.experts
        assert torch.equal(part.down_proj_scale, full.down_proj_scale[2 * rank:2 * rank + 2])
        assert torch.equal(part.gate_up_proj.view(torch.uint8), full.gate_up_proj[2 * rank:2 * rank + 2]
                           .view(torch.uint8))


def test_our_fbgemm_checkpoint_round_trips(tmp_path):
    fn = QuantConfig(method="fp8", fp8_format="e4m3fn", ignore=["model.layers.0.self_attn"])
    src = load_model("tiny-maverick", device="cpu", quantization=fn)
    out = str(tmp_path / "ours")
    write_checkpoint(src, out, "e4m3fn", dtype=torch.float32, progress=False)
    written = {}
    for f in os.listdir(out):
        if f.endswith(".safetensors"):
            written.update(load_file(os.path.join(out, f)))
    cfg = json.load(open(os.path.join(out, "config.json")))
    assert cfg["quantization_config"]["quant_method"] == "fbgemm_fp8"
    hf_cfg = type("C", (), dict(num_local_experts=16, intermediate_size=96, hidden_size=128, hidden_act="silu"))
    ref = fbgemm_fp8.FbgemmFp8Llama4TextExperts(hf_cfg).state_dict()
    for k, v in ref.items():  # transformers' expert tensors, exactly
        t = written[f"model.layers.1.feed_forward.experts.{k}"]
        assert (t.shape, t.dtype) == (v.shape, v.dtype), k
    lin = fbgemm_fp8.FbgemmFp8Linear(128, 128, False).state_dict()
    for k, v in lin.items():
        t = written[f"model.layers.1.self_attn.q_proj.{k}"]
        assert (t.shape, t.dtype) == (v.shape, v.dtype), k
    back = load_model(out, device="cpu", progress=False)
    ids = torch.randint(5, 500, (2, 21), generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(back(ids), src(ids), rtol=0, atol=0)
    d0 = ops.dequantize_fp8(back.model.layers[1].feed_forward.experts.down_proj,
                            back.model.layers[1].feed_forward.experts.down_proj_scale)
    d1 = ops.dequantize_fp8(src.model.layers[1].feed_forward.experts.down_proj,
                            src.model.layers[1].feed_forward.experts.down_proj_scale)
    assert torch.equal(d0, d1)
