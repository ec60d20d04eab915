"""Full-size stand-ins for Meta's released Llama 4 checkpoints: the real config.json fields and the
real tensor names, shapes and dtypes (text under `language_model.`, the vision tower beside it, shards
with an index), as safetensors files holding a header and no data. Each file is extended to its
declared size without writing (sparse: no disk used), so its header validates and nothing is read.

The names and shapes are written out here from the released layout (llama4-spec.md, transformers'
Llama4TextExperts / FbgemmFp8Llama4TextExperts / Llama4VisionModel), not taken from this project's model.
"""
from __future__ import annotations

import json
import os
import struct

H, HEADS, KV, D, I, I_MLP, V, LAYERS = 5120, 40, 8, 128, 8192, 16384, 202048, 48
# The vision tower (same in Scout and Maverick): hidden, layers, MLP width, tile / patch size, adapter width
VH, VLAYERS, VI, TILE, PATCH, VOUT = 1408, 34, 5632, 336, 14, 4096
VISION_CONFIG = {"attention_dropout": 0.0, "hidden_act": "gelu", "hidden_size": VH, "image_size": TILE,
                 "initializer_range": 0.02, "intermediate_layers_indices": [], "intermediate_size": VI,
                 "model_type": "llama4_vision_model", "multi_modal_projector_bias": False, "norm_eps": 1e-05,
                 "num_attention_heads": 16, "num_channels": 3, "num_hidden_layers": VLAYERS, "patch_size": PATCH,
                 "pixel_shuffle_ratio": 0.5, "projector_dropout": 0.0, "projector_input_dim": VOUT,
                 "projector_output_dim": VOUT, "rope_theta": 10000, "vision_feature_layer": -1,
                 "vision_feature_select_strategy": "default", "vision_output_dim": VOUT}
_BYTES = {"BF16": 2, "F32": 4, "F8_E4M3": 1}

RELEASES = {
    "scout": dict(num_local_experts=16, interleave_moe_layer_step=1, use_qk_norm=True,
                  rope_scaling={"rope_type": "llama3", "factor": 16.0, "low_freq_factor": 1.0,
                                "high_freq_factor": 1.0, "original_max_position_embeddings": 8192},
                  max_position_embeddings=10485760),
    "maverick": dict(num_local_experts=128, interleave_moe_layer_step=2, use_qk_norm=False, rope_scaling=None,
                     max_position_embeddings=1048576),
}
RELEASES["maverick-fp8"] = RELEASES["maverick"]


def text_config(kind: str) -> dict:
    return dict(RELEASES[kind], model_type="llama4_text", hidden_size=H, intermediate_size=I,
                intermediate_size_mlp=I_MLP, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                num_key_value_heads=KV, head_dim=D, vocab_size=V, num_experts_per_tok=1, rope_theta=500000.0,
                attention_chunk_size=8192, attn_temperature_tuning=4, floor_scale=8192, attn_scale=0.1,
                rms_norm_eps=1e-5, hidden_act="silu", no_rope_layers=[], bos_token_id=200000,
                eos_token_id=[200001, 200007, 200008], pad_token_id=200018, attention_bias=False,
                torch_dtype="bfloat16")


def is_moe(kind: str, layer: int) -> bool:
    step = RELEASES[kind]["interleave_moe_layer_step"]
    return layer % step == step - 1


def modules_to_not_convert(kind: str) -> list[str]:
    """Meta's FP8 release quantises the routed experts; attention, dense MLPs, shared experts, routers,
    lm_head and the vision tower stay bf16."""
    out = []
    for i in range(LAYERS):
        p = f"language_model.model.layers.{i}"
        out.append(f"{p}.self_attn")
        out += [f"{p}.feed_forward.router", f"{p}.feed_forward.shared_expert"] if is_moe(kind, i) \
            else [f"{p}.feed_forward"]
    return out + ["language_model.lm_head", "vision_model", "multi_modal_projector"]


def config(kind: str) -> dict:
    cfg = {"model_type": "llama4", "architectures": ["Llama4ForConditionalGeneration"],
           "text_config": text_config(kind), "torch_dtype": "bfloat16", "tie_word_embeddings": False,
           "vision_config": VISION_CONFIG, "image_token_index": 200092, "boi_token_index": 200080,
           "eoi_token_index": 200081}
    if kind == "maverick-fp8":
        cfg["quantization_config"] = {"quant_method": "fbgemm_fp8", "activation_scale_ub": 1200.0,
                                      "modules_to_not_convert": modules_to_not_convert(kind)}
    return cfg


def tensors(kind: str) -> dict[str, tuple[str, tuple[int, ...]]]:
    """name -> (safetensors dtype, shape) of the release."""
    E, fp8 = RELEASES[kind]["num_local_experts"], kind == "maverick-fp8"
    t: dict[str, tuple[str, tuple[int, ...]]] = {}
    lm = "language_model."
    t[lm + "model.embed_tokens.weight"] = ("BF16", (V, H))
    for i in range(LAYERS):
        p = f"{lm}model.layers.{i}."
        for n, shape in (("q_proj", (HEADS * D, H)), ("k_proj", (KV * D, H)), ("v_proj", (KV * D, H)),
                         ("o_proj", (H, HEADS * D))):
            t[f"{p}self_attn.{n}.weight"] = ("BF16", shape)
        t[p + "input_layernorm.weight"] = ("BF16", (H,))
        t[p + "post_attention_layernorm.weight"] = ("BF16", (H,))
        if is_moe(kind, i):
            f = p + "feed_forward."
            t[f + "router.weight"] = ("BF16", (E, H))
            t[f + "experts.gate_up_proj"] = ("F8_E4M3" if fp8 else "BF16", (E, H, 2 * I))
            t[f + "experts.down_proj"] = ("F8_E4M3" if fp8 else "BF16", (E, I, H))
            if fp8:  # FbgemmFp8Llama4TextExperts: per output channel, down's scales [E, H, 1]
                t[f + "experts.gate_up_proj_scale"] = ("F32", (E, 1, 2 * I))
                t[f + "experts.down_proj_scale"] = ("F32", (E, H, 1))
            for n, shape in (("gate_proj", (I, H)), ("up_proj", (I, H)), ("down_proj", (H, I))):
                t[f"{f}shared_expert.{n}.weight"] = ("BF16", shape)
        else:
            for n, shape in (("gate_proj", (I_MLP, H)), ("up_proj", (I_MLP, H)), ("down_proj", (H, I_MLP))):
                t[f"{p}feed_forward.{n}.weight"] = ("BF16", shape)
    t[lm + "model.norm.weight"] = ("BF16", (H,))
    t[lm + "lm_head.weight"] = ("BF16", (V, H))
    t.update(vision_tensors())
    return t


def vision_tensors() -> dict[str, tuple[str, tuple[int, ...]]]:
    """The released vision tower and projector (transformers' Llama4VisionModel names), all bf16, also
    in the FP8 release (its modules_to_not_convert)."""
    v = "vision_model."
    n_pos = (TILE // PATCH) ** 2 + 1
    t = {v + "class_embedding": ("BF16", (VH,)), v + "positional_embedding_vlm": ("BF16", (n_pos, VH)),
         v + "patch_embedding.linear.weight": ("BF16", (VH, 3 * PATCH * PATCH))}
    for ln in ("layernorm_pre", "layernorm_post"):
        t[f"{v}{ln}.weight"] = t[f"{v}{ln}.bias"] = ("BF16", (VH,))
    for i in range(VLAYERS):
        p = f"{v}model.layers.{i}."
        for n in ("q_proj", "k_proj", "v_proj", "o_proj"):
            t[f"{p}self_attn.{n}.weight"] = ("BF16", (VH, VH))
            t[f"{p}self_attn.{n}.bias"] = ("BF16", (VH,))
        t[p + "mlp.fc1.weight"], t[p + "mlp.fc1.bias"] = ("BF16", (VI, VH)), ("BF16", (VI,))
        t[p + "mlp.fc2.weight"], t[p + "mlp.fc2.bias"] = ("BF16", (VH, VI)), ("BF16", (VH,))
        for ln in ("input_layernorm", "post_attention_layernorm"):
            t[f"{p}{ln}.weight"] = t[f"{p}{ln}.bias"] = ("BF16", (VH,))
    t[v + "vision_adapter.mlp.fc1.weight"] = ("BF16", (VOUT, VI))  # pixel-shuffled width in
    t[v + "vision_adapter.mlp.fc2.weight"] = ("BF16", (VOUT, VOUT))
    t["multi_modal_projector.linear_1.weight"] = ("BF16", (H, VOUT))
    return t


def nbytes(dtype: str, shape: tuple[int, ...]) -> int:
    n = _BYTES[dtype]
    for d in shape:
        n *= d
    return n


def write_header_only(folder: str, kind: str, shard_bytes: int = 5 * 10**9,
                      edit=None) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Write the release `kind` to `folder` (config.json, index, sparse shards). `edit(tensors)` may
    change the tensor table first. Returns the table written."""
    table = tensors(kind)
    if edit is not None:
        edit(table)
    os.makedirs(folder, exist_ok=True)
    shards, cur, size = [], [], 0
    for name, (dt, shape) in table.items():
        if cur and size + nbytes(dt, shape) > shard_bytes:
            shards.append(cur)
            cur, size = [], 0
        cur.append(name)
        size += nbytes(dt, shape)
    shards.append(cur)
    weight_map = {}
    for k, names in enumerate(shards):
        file = f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
        header, offset = {"__metadata__": {"format": "pt"}}, 0
        for n in names:
            dt, shape = table[n]
            header[n] = {"dtype": dt, "shape": list(shape), "data_offsets": [offset, offset + nbytes(dt, shape)]}
            offset += nbytes(dt, shape)
            weight_map[n] = file
        raw = json.dumps(header).encode()
        raw += b" " * (-len(raw) % 8)
        with open(os.path.join(folder, file), "wb") as f:
            f.write(struct.pack("<Q", len(raw)) + raw)
            f.truncate(8 + len(raw) + offset)  # sparse: the data section is declared, never written
    total = sum(nbytes(*v) for v in table.values())
    with open(os.path.join(folder, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config(kind), f)
    return table
