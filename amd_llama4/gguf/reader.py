"""Read llama.cpp Llama 4 GGUF files: the config from the metadata, the weights tensor by tensor.

`GGUFSource` hands out our parameters like model/layouts.py's CheckpointSource does for safetensors
(the loader's `_fill` consumes either), dequantised to fp32 on the host with `gguf.quants`; on the
meta device nothing is read. The config follows what llama.cpp itself computes from the file
(names.py lists the values llama.cpp fixes for llama4), except where a file we wrote carries our
exact config under names.CONFIG_KEY.
"""
from __future__ import annotations

import json
import math
import os
from typing import Any, Callable

import numpy as np
import torch

from amd_llama4.config import Llama4Config, RopeScaling
from amd_llama4.gguf import names
from amd_llama4.errors import CheckpointError


class GGUFError(CheckpointError):
    """A GGUF file we cannot load; the message names the file and the key or tensor at fault."""


def _gguf():
    try:
        import gguf
    except ImportError:
        raise ImportError("reading/writing GGUF needs the 'gguf' package: pip install gguf") from None
    return gguf


# Types we dequantise at load (gguf.quants implements them in numpy).
SUPPORTED_TYPES = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K",
                   "Q5_K", "Q6_K")
# general.file_type -> the checkpoint dtype (dtype="auto" on a GPU); quantised files: none.
_FILE_DTYPE = {0: "float32", 1: "float16", 32: "bfloat16"}
# Token texts llama.cpp also treats as end of generation (besides the eos/eot/eom ids in the file).
EOG_TEXTS = ("<|eot|>", "<|eom|>", "<|end_of_text|>", "<|eot_id|>", "<|eom_id|>", "<|endoftext|>")
# Fields of our config llama.cpp's metadata does not carry: taken from names.CONFIG_KEY when present.
_OWN_FIELDS = ("attention_chunk_size", "floor_scale", "attn_scale", "attn_temperature_tuning", "no_rope_layers",
               "no_rope_layer_interval", "moe_layers", "use_qk_norm", "rope_scaling", "eos_token_id",
               "bos_token_id", "pad_token_id", "max_position_embeddings", "tie_word_embeddings")


def is_gguf(path: str | os.PathLike) -> bool:
    """A path naming a GGUF file (by its extension; the magic is checked when it is opened)."""
    return os.fspath(path).lower().endswith(".gguf")


def open_gguf(path: str | os.PathLike):
    """A gguf.GGUFReader over `path` (memory-mapped), with errors naming the file."""
    gguf = _gguf()
    p = os.fspath(path)
    if not os.path.isfile(p):
        raise FileNotFoundError(f"{p}: no such GGUF file")
    try:
        return gguf.GGUFReader(p, "r")
    except (ValueError, OSError) as e:
        raise GGUFError(f"{p}: not a readable GGUF file ({e})") from None


def field(reader, key: str, path: str, default: Any = ..., ) -> Any:
    """The value of metadata `key` (a list for arrays); missing without default -> error naming it."""
    f = reader.fields.get(key)
    if f is None:
        if default is ...:
            raise GGUFError(f"{path}: missing metadata key {key!r}")
        return default
    return f.contents()


def eog_ids(reader, path: str) -> list[int]:
    """End-of-generation ids as llama.cpp collects them: eos, eot, eom, and control tokens named
    like one (Llama 4's <|eot|> / <|eom|> / <|end_of_text|>)."""
    ids = [field(reader, f"tokenizer.ggml.{k}_token_id", path, None) for k in ("eos", "eot", "eom")]
    out = [int(i) for i in ids if i is not None]
    tokens = field(reader, "tokenizer.ggml.tokens", path, None) or []
    types = field(reader, "tokenizer.ggml.token_type", path, None) or [3] * len(tokens)
    for i, (t, ty) in enumerate(zip(tokens, types)):
        if t in EOG_TEXTS and ty == 3:  # CONTROL
            out.append(i)
    return list(dict.fromkeys(out))


def _f32(v: float) -> float:
    """A float32 metadata value as the decimal it was written from (1e-05, not 9.99999974e-06)."""
    return float(str(np.float32(v)))


def rope_scaling_from_factors(factors: np.ndarray, theta: float, head_dim: int, path: str) -> RopeScaling | None:
    """The llama3 RopeScaling that produces llama.cpp's per-frequency divisors `factors` (the
    `rope_freqs.weight` tensor): the file stores only the divisors, our config the parameters.
    Only the ratios low/orig and high/orig are determined; orig is chosen so low is about 1.
    Verified by recomputing the divisors; an error names the tensor if none fits."""
    from amd_llama4.ops.rope import rope_inv_freq

    f = np.asarray(factors, dtype=np.float64).reshape(-1)
    if f.shape[0] != head_dim // 2 or not np.all(np.isfinite(f)) or np.any(f <= 0):
        raise GGUFError(f"{path}: tensor {names.ROPE_FREQS!r} has {f.shape[0]} values, expected {head_dim // 2} "
                        f"positive divisors (head_dim {head_dim} / 2)")
    if np.allclose(f, 1.0, rtol=1e-6, atol=0):
        return None
    factor = float(f.max())
    x = theta ** (-np.arange(0, head_dim, 2, dtype=np.float64) / head_dim) / (2 * math.pi)  # 1 / wavelength
    ones, full = np.isclose(f, 1.0, rtol=1e-5), np.isclose(f, factor, rtol=1e-5)
    band = ~(ones | full)
    # smooth in [0, 1] of each band point: 1 / f = (1 - s) / factor + s
    s = (1 / f[band] - 1 / factor) / (1 - 1 / factor)
    xb = x[band]
    x_hi = x[ones].min() if ones.any() else x.max() * 2  # high frequencies: 1/wl above b
    x_lo = x[full].max() if full.any() else x.min() / 2  # low frequencies: 1/wl below a
    if band.sum() >= 2:  # exact: 1/wl = a + s (b - a) on the band
        i, j = int(np.argmax(s)), int(np.argmin(s))
        width = (xb[i] - xb[j]) / (s[i] - s[j]) if s[i] != s[j] else 0.0
        a = xb[i] - s[i] * width
        b = a + width
    elif band.sum() == 1:  # a one-point band: any [a, b] around it with the right split works
        x0, s0 = xb[0], s[0]
        width = 0.5 * min((x0 - x_lo) / s0 if s0 > 0 else math.inf, (x_hi - x0) / (1 - s0) if s0 < 1 else math.inf)
        a, b = x0 - s0 * width, x0 + (1 - s0) * width
    else:  # no band (Scout: low == high): one threshold between the two groups
        a = b = math.sqrt(x_lo * x_hi)
    orig = max(1, round(1 / a)) if a > 0 else 1
    low, high = a * orig, b * orig
    rs = RopeScaling(factor=factor, low_freq_factor=_f32(low), high_freq_factor=_f32(low if a == b else high),
                     original_max_position_embeddings=orig)
    base = torch.tensor(2 * math.pi * x, dtype=torch.float64).float()
    got = (base / rope_inv_freq(head_dim, theta, rs)).double().numpy()
    if not np.allclose(got, f, rtol=1e-4, atol=0):
        raise GGUFError(f"{path}: tensor {names.ROPE_FREQS!r} is not a llama3 rope scaling (no factor / low / "
                        f"high / original_max_position_embeddings reproduces it)")
    return rs


def read_config(path: str | os.PathLike, reader=None) -> Llama4Config:
    """Our Llama4Config from a llama.cpp llama4 GGUF's metadata (see names.py for the fixed values)."""
    p = os.fspath(path)
    r = reader if reader is not None else open_gguf(p)
    arch = field(r, "general.architecture", p)
    if arch != names.ARCH:
        raise GGUFError(f"{p}: metadata 'general.architecture' is {arch!r}, expected {names.ARCH!r} (Llama 4)")

    def k(name: str, default: Any = ...) -> Any:
        return field(r, names.key(name), p, default)

    heads = int(k("attention.head_count"))
    hidden = int(k("embedding_length"))
    head_dim = int(k("attention.key_length", hidden // heads))
    n_layers = int(k("block_count"))
    experts = int(k("expert_count"))
    if experts == 0:
        raise GGUFError(f"{p}: metadata {names.key('expert_count')!r} is 0 (a dense llama4 model; we load MoE only)")
    tensors = {t.name: t for t in r.tensors}
    tokens = field(r, "tokenizer.ggml.tokens", p, None)
    vocab = k("vocab_size", None)
    if vocab is None:
        vocab = len(tokens) if tokens else int(tensors["token_embd.weight"].shape[1])
    window = k("attention.sliding_window", None)
    chunked = not (window is not None and int(window) == 0)
    d: dict[str, Any] = dict(
        vocab_size=int(vocab), hidden_size=hidden, num_hidden_layers=n_layers, num_attention_heads=heads,
        num_key_value_heads=int(k("attention.head_count_kv", heads)), head_dim=head_dim,
        intermediate_size=int(k("expert_feed_forward_length")), intermediate_size_mlp=int(k("feed_forward_length")),
        max_position_embeddings=int(k("context_length")),
        rms_norm_eps=_f32(k("attention.layer_norm_rms_epsilon")), rope_theta=_f32(k("rope.freq_base", 10000.0)),
        num_local_experts=experts, num_experts_per_tok=int(k("expert_used_count")),
        interleave_moe_layer_step=int(k("interleave_moe_layer_step", 1)),
        use_qk_norm=experts != names.LLAMA_CPP_NO_QK_NORM_EXPERTS,
        attention_chunk_size=names.LLAMA_CPP_CHUNK if chunked else None,
        no_rope_layers=([int((i + 1) % names.LLAMA_CPP_NO_ROPE_INTERVAL != 0) for i in range(n_layers)]
                        if chunked else [1] * n_layers),
        attn_temperature_tuning=True, floor_scale=names.LLAMA_CPP_FLOOR_SCALE, attn_scale=names.LLAMA_CPP_ATTN_SCALE,
        attention_bias=f"blk.0.{names._LAYER['self_attn.q_proj.bias']}" in tensors,
        tie_word_embeddings="output.weight" not in tensors,
        bos_token_id=field(r, "tokenizer.ggml.bos_token_id", p, None),
        eos_token_id=eog_ids(r, p) or None,
        pad_token_id=field(r, "tokenizer.ggml.padding_token_id", p, None),
        torch_dtype=_FILE_DTYPE.get(field(r, "general.file_type", p, -1)),
    )
    if names.ROPE_FREQS in tensors:
        rs = rope_scaling_from_factors(_to_torch(tensors[names.ROPE_FREQS], p).numpy(), d["rope_theta"], head_dim, p)
        d["rope_scaling"] = None if rs is None else {"rope_type": "llama3", **rs.__dict__}
    own = field(r, names.CONFIG_KEY, p, None)
    if own is not None:
        try:
            mine = json.loads(own)
        except json.JSONDecodeError as e:
            raise GGUFError(f"{p}: metadata {names.CONFIG_KEY!r} is not valid JSON ({e})") from None
        d.update({f: mine[f] for f in _OWN_FIELDS if f in mine})
    try:
        return Llama4Config.from_dict(d)
    except (TypeError, ValueError) as e:
        raise GGUFError(f"{p}: metadata gives no valid Llama 4 config ({e})") from None


def _to_torch(t, path: str) -> torch.Tensor:
    """A GGUF tensor as fp32 torch in torch order (GGUF's [in, out] is our [out, in])."""
    gguf = _gguf()
    name = t.tensor_type.name
    if name not in SUPPORTED_TYPES:
        raise GGUFError(f"{path}: tensor {t.name!r} has type {name}, unsupported (supported: "
                        f"{', '.join(SUPPORTED_TYPES)})")
    shape = tuple(int(n) for n in reversed(t.shape.tolist()))
    if name in ("F32", "F16"):
        arr = np.asarray(t.data)
    else:
        arr = gguf.quants.dequantize(np.asarray(t.data), t.tensor_type)
    return torch.from_numpy(np.array(arr, dtype=np.float32).reshape(shape))  # a copy: the file is mapped read-only


class GGUFSource:
    """Our parameters from a GGUF file, one at a time (the loader's source interface)."""

    def __init__(self, path: str | os.PathLike, meta: bool = False):
        self.path = os.fspath(path)
        self.reader = open_gguf(self.path)
        self.meta = meta
        self.tensors = {t.name: t for t in self.reader.tensors}
        self.config = read_config(self.path, self.reader)
        self.used: set[str] = {names.ROPE_FREQS} & set(self.tensors)

    def has_type(self, qtype: str) -> bool:
        """Whether any tensor is stored as `qtype` (e.g. 'Q4_0')."""
        return any(t.tensor_type.name == qtype for t in self.tensors.values())

    def _get(self, gname: str) -> torch.Tensor:
        t = self.tensors[gname]
        self.used.add(gname)
        if self.meta:
            return torch.empty(tuple(int(n) for n in reversed(t.shape.tolist())), device="meta")
        return _to_torch(t, self.path)

    def load(self, name: str, expect: torch.Size, shard: Callable | None = None) -> torch.Tensor:
        fused = names.fused_gate_up_name(name)
        try:
            want = names.gguf_names(name)
        except KeyError as e:
            raise GGUFError(f"{self.path}: {e.args[0]}") from None
        if fused is not None and fused in self.tensors:
            t = self._get(fused).transpose(1, 2)  # [E, 2I, H] -> [E, H, 2I]
        else:
            missing = [g for g in want if g not in self.tensors]
            if missing:
                raise GGUFError(f"{self.path}: missing tensor {missing[0]!r} (for our {name!r})")
            parts = [self._get(g) for g in want]
            if name.endswith("experts.gate_up_proj"):  # gate, up [E, I, H] -> [E, H, 2I]
                if parts[0].shape != parts[1].shape:
                    raise GGUFError(f"{self.path}: tensors {want[0]!r} {list(parts[0].shape)} and {want[1]!r} "
                                    f"{list(parts[1].shape)} differ in shape")
                t = torch.cat(parts, dim=1).transpose(1, 2)
            elif name.endswith("experts.down_proj"):  # [E, H, I] -> [E, I, H]
                t = parts[0].transpose(1, 2)
            else:
                t = parts[0]
        if tuple(t.shape) != tuple(expect):
            raise GGUFError(f"{self.path}: tensor {(fused if fused in self.tensors else want[0])!r} gives {name!r} "
                            f"shape {list(t.shape)}, expected {list(expect)}")
        t = t if self.meta else t.contiguous()
        return shard(t) if shard is not None else t

    def file_of(self, name: str) -> str:
        return self.path

    def where(self, name: str) -> str:
        return self.path

    def kv_scales(self) -> dict:
        return {}

    def unexpected(self) -> list[str]:
        return sorted(n for n in self.tensors if n not in self.used)

    def close(self) -> None:
        self.reader = None
        self.tensors = {}
