"""llama.cpp's names for Llama 4 in GGUF files, and how each tensor maps onto our parameters.

Facts from llama.cpp's `convert_hf_to_gguf.py` (Llama4Model) and `src/models/llama4.cpp`:
- architecture "llama4"; tensors in ggml order (GGUF shape [in, out] = numpy/torch [out, in]).
- q/k are NOT permuted for llama4 (llama.cpp's rope for it rotates consecutive pairs, as HF does).
- experts: `ffn_{gate,up}_exps` [E, I, H] and `ffn_down_exps` [E, H, I] (torch order, nn.Linear
  [out, in] per expert); the converter may also fuse gate and up into `ffn_gate_up_exps` [E, 2I, H].
  Our fused experts are input-major: gate_up_proj [E, H, 2I], down_proj [E, I, H].
- llama3 rope scaling travels as the `rope_freqs.weight` tensor of per-frequency divisors, not keys.
- Not in the file, fixed by llama.cpp for llama4 unless `llama4.attention.sliding_window` is 0:
  chunked attention of 8192, temperature tuning floor 8192 / scale 0.1, every 4th layer NoPE;
  QK norm on unless the model has 128 experts (Maverick). With sliding_window 0: no chunking, no NoPE.
"""
from __future__ import annotations

import re

ARCH = "llama4"
# Our own metadata key: the exact Llama4Config (HF config.json form) of a file we wrote, so fields
# llama.cpp does not store (chunk size, temperature tuning, NoPE layers, QK norm) round-trip.
CONFIG_KEY = "amd_llama4.text_config"

# llama.cpp's fixed llama4 values (src/models/llama4.cpp), used when a file does not say otherwise.
LLAMA_CPP_CHUNK = 8192
LLAMA_CPP_FLOOR_SCALE = 8192
LLAMA_CPP_ATTN_SCALE = 0.1
LLAMA_CPP_NO_ROPE_INTERVAL = 4
LLAMA_CPP_NO_QK_NORM_EXPERTS = 128

ROPE_FREQS = "rope_freqs.weight"

# our parameter name -> GGUF tensor name, for tensors that map one to one (no reshaping)
_GLOBAL = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}
_LAYER = {
    "input_layernorm.weight": "attn_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.bias": "attn_v.bias",
    "self_attn.o_proj.bias": "attn_output.bias",
    "feed_forward.gate_proj.weight": "ffn_gate.weight",
    "feed_forward.up_proj.weight": "ffn_up.weight",
    "feed_forward.down_proj.weight": "ffn_down.weight",
    "feed_forward.router.weight": "ffn_gate_inp.weight",
    "feed_forward.shared_expert.gate_proj.weight": "ffn_gate_shexp.weight",
    "feed_forward.shared_expert.up_proj.weight": "ffn_up_shexp.weight",
    "feed_forward.shared_expert.down_proj.weight": "ffn_down_shexp.weight",
}
GATE_EXPS, UP_EXPS, GATE_UP_EXPS, DOWN_EXPS = ("ffn_gate_exps.weight", "ffn_up_exps.weight",
                                               "ffn_gate_up_exps.weight", "ffn_down_exps.weight")
_LAYER_PARAM = re.compile(r"model\.layers\.(\d+)\.(.+)$")


def gguf_names(param: str) -> tuple[str, ...]:
    """The GGUF tensor(s) one of our parameters is made from (experts' gate_up: gate then up).
    KeyError for a parameter with no GGUF form (the vision tower)."""
    if param in _GLOBAL:
        return (_GLOBAL[param],)
    m = _LAYER_PARAM.match(param)
    if m:
        i, rest = m.groups()
        if rest in _LAYER:
            return (f"blk.{i}.{_LAYER[rest]}",)
        if rest == "feed_forward.experts.gate_up_proj":
            return (f"blk.{i}.{GATE_EXPS}", f"blk.{i}.{UP_EXPS}")
        if rest == "feed_forward.experts.down_proj":
            return (f"blk.{i}.{DOWN_EXPS}",)
    raise KeyError(f"{param!r} has no llama.cpp GGUF name (text model tensors only)")


def fused_gate_up_name(param: str) -> str | None:
    """The converter's optional fused gate+up expert tensor for an experts.gate_up_proj parameter."""
    m = _LAYER_PARAM.match(param)
    if m and m.group(2) == "feed_forward.experts.gate_up_proj":
        return f"blk.{m.group(1)}.{GATE_UP_EXPS}"
    return None


def key(name: str) -> str:
    """An architecture key: key('block_count') -> 'llama4.block_count'."""
    return f"{ARCH}.{name}"
