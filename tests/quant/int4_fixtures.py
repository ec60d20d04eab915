"""int4 checkpoint fixtures (a helper module, not a test file).

Both start from a random transformers Llama4ForCausalLM saved with save_pretrained (tests/hf_reference.py)
and return, with the folder, the HF model holding the DEQUANTISED weights (fp32), whose logits the int4
load must reproduce.
  compressed-tensors: quantised and packed by the `compressed-tensors` package itself (calculate_qparams,
    then PackedQuantizationCompressor.compress per linear), scales stored in bf16 as published
    checkpoints do, experts written per expert (`experts.{i}.{gate,up,down}_proj.*`, as llm-compressor
    writes Llama 4), quantization_config from its QuantizationConfig.
  GPTQ: round-to-nearest levels packed here into GPTQ's layout (documented at `pack_gptq`), fp16 scales.
"""
from __future__ import annotations

import json
import os
import re

import torch
from safetensors.torch import load_file, save_file

from amd_llama4.config import Llama4Config
from tests.hf_reference import save_hf

# widths divisible by 128 so group 128 quantises every projection; layer 0 dense, layer 1 MoE
CFG = dict(vocab_size=61, hidden_size=128, num_attention_heads=4, num_key_value_heads=2, head_dim=32,
           intermediate_size=128, intermediate_size_mlp=256, num_hidden_layers=2, num_local_experts=4,
           num_experts_per_tok=1, interleave_moe_layer_step=2, attention_chunk_size=4, floor_scale=2,
           bos_token_id=1, eos_token_id=2, pad_token_id=0, rope_scaling=None)
LINEAR = re.compile(r"(.*\.(self_attn\.[qkvo]_proj|feed_forward\.(shared_expert\.)?(gate|up|down)_proj))\.weight$")
EXPERTS = re.compile(r"(.*\.feed_forward\.experts)\.(gate_up_proj|down_proj)$")


def _hf(folder, seed: int):
    hf = save_hf(Llama4Config(**CFG), os.path.join(folder, "hf"), seed=seed)
    return hf, load_file(os.path.join(folder, "hf", "model.safetensors"))


def _per_linear(tensors: dict[str, torch.Tensor]):
    """(checkpoint base name, W [out, in]) of every quantised linear, experts split per expert;
    and the other tensors. Also the rule to put dequantised linears back into HF's names."""
    linears, others = {}, {}
    for name, t in tensors.items():
        m, e = LINEAR.fullmatch(name), EXPERTS.fullmatch(name)
        if m:
            linears[m.group(1)] = t
        elif e and e.group(2) == "gate_up_proj":  # [E, H, 2I] input-major
            inter = t.shape[2] // 2
            for i in range(t.shape[0]):
                linears[f"{e.group(1)}.{i}.gate_proj"] = t[i, :, :inter].t().contiguous()
                linears[f"{e.group(1)}.{i}.up_proj"] = t[i, :, inter:].t().contiguous()
        elif e:  # down [E, I, H]
            for i in range(t.shape[0]):
                linears[f"{e.group(1)}.{i}.down_proj"] = t[i].t().contiguous()
        else:
            others[name] = t
    return linears, others


def _dequantised_hf(hf, deq: dict[str, torch.Tensor]):
    """Load dequantised [out, in] linears (per-expert names) into the HF model, experts re-fused."""
    params = dict(hf.named_parameters())
    with torch.no_grad():
        for base, w in deq.items():
            m = re.fullmatch(r"(.*\.experts)\.(\d+)\.(gate|up|down)_proj", base)
            if m is None:
                params[base + ".weight"].copy_(w)
                continue
            e, which = int(m.group(2)), m.group(3)
            if which == "down":
                params[m.group(1) + ".down_proj"][e].copy_(w.t())
            else:
                gu = params[m.group(1) + ".gate_up_proj"][e]
                inter = gu.shape[1] // 2
                gu[:, (slice(0, inter) if which == "gate" else slice(inter, 2 * inter))].copy_(w.t())
    return hf


def _write(folder, tensors, qc) -> None:
    save_file(tensors, os.path.join(folder, "model.safetensors"))
    with open(os.path.join(folder, "hf", "config.json")) as f:
        cfg = json.load(f)
    cfg["quantization_config"] = qc
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(cfg, f)


def save_compressed_tensors(folder, group_size: int, symmetric: bool, seed: int = 3):
    """-> HF model holding the dequantised weights. The checkpoint is written to `folder`."""
    from compressed_tensors.compressors.pack_quantized.base import PackedQuantizationCompressor
    from compressed_tensors.quantization import QuantizationArgs, QuantizationConfig, QuantizationScheme
    from compressed_tensors.quantization.utils import calculate_qparams

    args = QuantizationArgs(num_bits=4, type="int", symmetric=symmetric, strategy="group", group_size=group_size)
    scheme = QuantizationScheme(targets=["Linear"], weights=args)
    hf, tensors = _hf(folder, seed)
    linears, out = _per_linear(tensors)
    deq = {}
    for base, w in linears.items():
        g = w.float().reshape(w.shape[0], -1, group_size)
        scale, zp = calculate_qparams(g.amin(-1), g.amax(-1), args)
        scale = scale.to(torch.bfloat16)  # stored as published checkpoints store them
        sd = {"weight": w.float(), "weight_scale": scale}
        if not symmetric:
            sd["weight_zero_point"] = zp
        packed = PackedQuantizationCompressor.compress(sd, scheme)
        out.update({f"{base}.{k}": v for k, v in packed.items()})
        # the reference: the package's own decompression, in fp32 (bf16 scales are exact in fp32)
        back = PackedQuantizationCompressor.decompress({**packed, "weight_scale": scale.float()}, scheme)
        deq[base] = back["weight"].float()
    ignore = sorted({n.removesuffix(".weight") for n in out if n.endswith((".router.weight", "lm_head.weight"))})
    qc = QuantizationConfig(config_groups={"group_0": scheme}, format="pack-quantized",
                            quantization_status="compressed", ignore=ignore).model_dump(mode="json")
    _write(folder, out, qc)
    return _dequantised_hf(hf, deq)


def _int32(x: torch.Tensor) -> torch.Tensor:
    """int64 holding 32-bit patterns -> int32 with the same bits (two's complement)."""
    x = x & 0xFFFFFFFF
    return torch.where(x >= 2 ** 31, x - 2 ** 32, x).to(torch.int32)


def pack_gptq(q: torch.Tensor, z: torch.Tensor, zero_offset: int) -> tuple[torch.Tensor, torch.Tensor]:
    """GPTQ packing, written out from the format's definition:
    q uint [N, K] (0..15) -> qweight int32 [K/8, N], qweight[j, n] = sum_i q[n, 8j+i] << 4i;
    z uint [N, K/G] -> qzeros int32 [K/G, N/8], qzeros[g, j] = sum_i (z[8j+i, g] - zero_offset) << 4i
    (zero_offset 1: checkpoint_format 'gptq' v1 stores z - 1; 0: 'gptq_v2')."""
    N, K = q.shape
    shifts = torch.arange(0, 32, 4, dtype=torch.int64)
    qw = (q.t().long().reshape(K // 8, 8, N) << shifts[None, :, None]).sum(1)
    zz = ((z.t().long() - zero_offset) & 0xF).reshape(z.shape[1], N // 8, 8)
    qz = (zz << shifts[None, None, :]).sum(-1)
    return _int32(qw), _int32(qz)


def save_gptq(folder, group_size: int, symmetric: bool, checkpoint_format: str = "gptq", seed: int = 4):
    """-> HF model holding the dequantised weights; GPTQ checkpoint in `folder`."""
    hf, tensors = _hf(folder, seed)
    linears, out = _per_linear(tensors)
    off = 1 if checkpoint_format == "gptq" else 0
    deq = {}
    for base, w in linears.items():
        N, K = w.shape
        g = w.float().reshape(N, K // group_size, group_size)
        if symmetric:
            s = (g.abs().amax(-1) / 7).to(torch.float16).float()
            z = torch.full_like(s, 8)
        else:
            lo, hi = g.amin(-1).clamp(max=0), g.amax(-1).clamp(min=0)
            s = ((hi - lo) / 15).to(torch.float16).float()
            z = torch.clamp(torch.round(-lo / s), 1, 15)  # >= 1: v1 cannot store a zero point of 0
        q = torch.clamp(torch.round(g / s[..., None]) + z[..., None], 0, 15)
        deq[base] = ((q - z[..., None]) * s[..., None]).reshape(N, K)
        qweight, qzeros = pack_gptq(q.reshape(N, K).to(torch.uint8), z.to(torch.uint8), off)
        out[f"{base}.qweight"], out[f"{base}.qzeros"] = qweight, qzeros
        out[f"{base}.scales"] = s.t().to(torch.float16).contiguous()
        out[f"{base}.g_idx"] = (torch.arange(K) // group_size).to(torch.int32)
    qc = {"quant_method": "gptq", "bits": 4, "group_size": group_size, "sym": symmetric, "desc_act": False,
          "checkpoint_format": checkpoint_format, "true_sequential": True, "static_groups": False}
    _write(folder, out, qc)
    return _dequantised_hf(hf, deq)
