"""Export a Llama 4 text model to a GGUF file llama.cpp reads (`amd-llama4 convert --to gguf`).

Names, layouts, metadata and tensor types as llama.cpp's own converter writes them (names.py):
norms, biases, the router and rope_freqs in F32; the other weights in the output type, Q8_0/Q4_0
falling back to F16 where a row is not a whole number of 32-value blocks. Our exact config also
goes in names.CONFIG_KEY so a round trip through our reader is lossless; fields llama.cpp fixes
itself for llama4 (chunk size, temperature tuning, NoPE layers, QK norm) are warned about when the
model differs, since llama.cpp would compute another model from the file.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import torch

from amd_llama4.config import Llama4Config
from amd_llama4.gguf import names
from amd_llama4.gguf.reader import GGUFError, _gguf
from amd_llama4.gguf.tokenizer import CONTROL, NORMAL, UNUSED, USER_DEFINED, pre_name

_log = logging.getLogger("amd_llama4")

OUTTYPES = ("f32", "f16", "bf16", "q8_0", "q4_0")
# outtype -> general.file_type (llama.cpp's LLAMA_FTYPE)
_FILE_TYPE = {"f32": 0, "f16": 1, "q4_0": 2, "q8_0": 7, "bf16": 32}


def llama_cpp_differences(cfg: Llama4Config) -> list[str]:
    """Fields of `cfg` llama.cpp would not reproduce from a GGUF (it fixes them for llama4)."""
    n, out = cfg.num_hidden_layers, []
    chunked = cfg.attention_chunk_size is not None
    step = cfg.interleave_moe_layer_step
    if cfg.moe_layers != [i for i in range(n) if step > 0 and (i + 1) % step == 0]:
        out.append(f"moe_layers={cfg.moe_layers} (llama.cpp: every {step}th layer)")
    if chunked:
        if cfg.attention_chunk_size != names.LLAMA_CPP_CHUNK:
            out.append(f"attention_chunk_size={cfg.attention_chunk_size} (llama.cpp: {names.LLAMA_CPP_CHUNK})")
        want = [int((i + 1) % names.LLAMA_CPP_NO_ROPE_INTERVAL != 0) for i in range(n)]
        if list(cfg.no_rope_layers[:n]) != want:
            out.append(f"no_rope_layers={cfg.no_rope_layers} (llama.cpp: NoPE every 4th layer)")
        if (not cfg.attn_temperature_tuning or cfg.floor_scale != names.LLAMA_CPP_FLOOR_SCALE
                or cfg.attn_scale != names.LLAMA_CPP_ATTN_SCALE) and 0 in cfg.no_rope_layers[:n]:
            out.append(f"temperature tuning {cfg.attn_temperature_tuning} floor_scale={cfg.floor_scale} "
                       f"attn_scale={cfg.attn_scale} (llama.cpp: on, 8192, 0.1)")
    elif 0 in cfg.no_rope_layers[:n]:
        out.append("NoPE layers without chunked attention (llama.cpp: all layers RoPE)")
    if cfg.use_qk_norm != (cfg.num_local_experts != names.LLAMA_CPP_NO_QK_NORM_EXPERTS):
        out.append(f"use_qk_norm={cfg.use_qk_norm} with {cfg.num_local_experts} experts (llama.cpp: QK norm "
                   f"unless 128 experts)")
    return out


def _tensor_type(gname: str, t: torch.Tensor, outtype: str):
    """The GGML type a tensor is stored in (as llama.cpp's converter chooses)."""
    Q = _gguf().GGMLQuantizationType
    if t.dim() <= 1 or gname.endswith(("_norm.weight", ".bias", "ffn_gate_inp.weight")) or gname == names.ROPE_FREQS:
        return Q.F32
    if outtype in ("q8_0", "q4_0"):
        if t.shape[-1] % 32:  # rows must be whole blocks of 32
            return Q.F16
        return Q.Q8_0 if outtype == "q8_0" else Q.Q4_0
    return {"f32": Q.F32, "f16": Q.F16, "bf16": Q.BF16}[outtype]


def _encode(t: torch.Tensor, qtype) -> np.ndarray:
    gguf = _gguf()
    a = t.detach().to("cpu", torch.float32).contiguous().numpy()
    if qtype == gguf.GGMLQuantizationType.F32:
        return a
    if qtype == gguf.GGMLQuantizationType.F16:
        return a.astype(np.float16)
    return gguf.quants.quantize(a, qtype)


def gguf_tensors(model) -> list[tuple[str, torch.Tensor]]:
    """(GGUF name, torch tensor in llama.cpp's layout) for every text parameter of `model`."""
    cfg = model.config
    out: list[tuple[str, torch.Tensor]] = []
    for n, p in model.named_parameters():
        if n.startswith(("vision_model.", "multi_modal_projector.")):
            continue  # the tower goes to an mmproj file in llama.cpp; not exported here
        if cfg.tie_word_embeddings and n == "lm_head.weight":
            continue
        if not p.is_floating_point() or p.element_size() == 1:
            raise GGUFError(f"{n!r} is {p.dtype}: export a full-precision model (not FP8 or int4)")
        try:
            gn = names.gguf_names(n)
        except KeyError as e:
            raise GGUFError(e.args[0]) from None
        t = p.detach()
        if n.endswith("experts.gate_up_proj"):  # [E, H, 2I] -> gate, up [E, I, H]
            inter = t.shape[-1] // 2
            out += [(gn[0], t[..., :inter].transpose(1, 2)), (gn[1], t[..., inter:].transpose(1, 2))]
        elif n.endswith("experts.down_proj"):  # [E, I, H] -> [E, H, I]
            out.append((gn[0], t.transpose(1, 2)))
        else:
            out.append((gn[0], t))
    if cfg.rope_scaling is not None:  # llama3 scaling: per-frequency divisors, as llama.cpp reads them
        from amd_llama4.ops.rope import rope_inv_freq

        base = rope_inv_freq(cfg.head_dim, cfg.rope_theta, None)
        out.append((names.ROPE_FREQS, base / rope_inv_freq(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling)))
    return out


def _add_tokenizer(w, tok, vocab_size: int) -> None:
    """tokenizer.ggml.* from our Tokenizer (a byte-level BPE tokenizer.json)."""
    raw = json.loads(tok._tok.to_str())
    model = raw.get("model") or {}
    if model.get("type") != "BPE" or not tok.is_byte_level:
        raise GGUFError(f"tokenizer {tok.source}: only byte-level BPE tokenizers export to GGUF (llama.cpp 'gpt2')")
    tokens: list[str | None] = [None] * vocab_size
    types = [NORMAL] * vocab_size
    for s, i in model.get("vocab", {}).items():
        if i < vocab_size:
            tokens[i] = s
    for a in raw.get("added_tokens", []):
        if a["id"] < vocab_size:
            tokens[a["id"]] = a["content"]
            types[a["id"]] = CONTROL if a.get("special") else USER_DEFINED
    for i, s in enumerate(tokens):
        if s is None:  # ids the embedding has but the tokenizer does not use (as llama.cpp's converter pads)
            tokens[i], types[i] = f"[PAD{i}]", UNUSED
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    regex = None
    pre = raw.get("pre_tokenizer") or {}
    for part in pre.get("pretokenizers", [pre]):
        if part.get("type") == "Split":
            regex = (part.get("pattern") or {}).get("Regex")
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre_name(regex))
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    cfg = getattr(tok, "_config", {})
    eos_text = cfg.get("eos_token")
    eos_text = eos_text.get("content") if isinstance(eos_text, dict) else eos_text
    eos = tok.token_to_id(eos_text) if isinstance(eos_text, str) else None
    eos = eos if eos is not None else (tok.eos_token_ids[0] if tok.eos_token_ids else None)
    for fn, v in ((w.add_bos_token_id, tok.bos_token_id), (w.add_eos_token_id, eos),
                  (w.add_pad_token_id, tok.pad_token_id)):
        if v is not None:
            fn(int(v))
    w.add_add_bos_token(tok.bos_token_id is not None)
    if tok.chat_template:
        w.add_chat_template(tok.chat_template)


def write_gguf(model, out: str | os.PathLike, outtype: str = "f32", tokenizer=None, name: str | None = None) -> Path:
    """Write `model` (a full-precision Llama4ForCausalLM; its text part) to the new file `out`.
    `tokenizer`: our Tokenizer for the tokenizer.ggml.* metadata (None: no vocabulary, token-id use only)."""
    gguf = _gguf()
    if outtype not in OUTTYPES:
        raise ValueError(f"outtype {outtype!r} not one of {OUTTYPES}")
    out = Path(out)
    if out.exists():
        raise FileExistsError(f"{out} already exists")
    cfg: Llama4Config = model.config
    if getattr(model, "parallel", None) is not None and model.parallel.enabled:
        raise ValueError("export a whole model, not a tensor-parallel rank's slice")
    for why in llama_cpp_differences(cfg):
        _log.warning("%s: llama.cpp will not reproduce %s; our loader will (from %s)", out, why, names.CONFIG_KEY)
    tensors = gguf_tensors(model)
    w = gguf.GGUFWriter(str(out), names.ARCH)
    w.add_type(gguf.GGUFType.MODEL)
    w.add_name(name or out.stem)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size_mlp)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_rope_freq_base(cfg.rope_theta)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_expert_count(cfg.num_local_experts)
    w.add_expert_used_count(cfg.num_experts_per_tok)
    w.add_key_length(cfg.head_dim)
    w.add_value_length(cfg.head_dim)
    w.add_file_type(_FILE_TYPE[outtype])
    w.add_vocab_size(cfg.vocab_size)
    w.add_rope_dimension_count(cfg.head_dim)
    w.add_interleave_moe_layer_step(cfg.interleave_moe_layer_step)
    w.add_expert_feed_forward_length(cfg.intermediate_size)
    if cfg.attention_chunk_size is None:  # llama.cpp: 0 = no chunked attention, RoPE everywhere
        w.add_sliding_window(0)
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    text = cfg.to_hf_dict()
    text.pop("quantization_config", None)
    w.add_string(names.CONFIG_KEY, json.dumps(text))
    if tokenizer is not None:
        _add_tokenizer(w, tokenizer, cfg.vocab_size)
    for gname, t in tensors:
        qtype = _tensor_type(gname, t, outtype)
        data = _encode(t, qtype)
        if qtype in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
            w.add_tensor(gname, data)
        else:
            w.add_tensor(gname, data, raw_dtype=qtype)
    try:
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
    finally:
        w.close()
    _verify(out, cfg)
    return out


def _verify(out: Path, cfg: Llama4Config) -> None:
    """The written file's metadata gives back our config (tensors are checked when it is loaded)."""
    from amd_llama4.gguf.reader import read_config

    skip = ("torch_dtype", "quantization_config")
    got = {k: v for k, v in read_config(out).to_hf_dict().items() if k not in skip}
    want = {k: v for k, v in cfg.to_hf_dict().items() if k not in skip}
    bad = sorted(k for k in want if got.get(k) != want[k])
    if bad:
        raise GGUFError(f"{out}: written metadata reads back differently in {bad}")
