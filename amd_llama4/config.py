"""Model and quantisation configs: dataclasses, parsed from Hugging Face config.json."""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Any

from amd_llama4.platform import FP8_FORMATS


@dataclass
class RopeScaling:
    """llama3-style frequency scaling (Scout). `None` on the model means plain RoPE."""

    factor: float = 16.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 1.0
    original_max_position_embeddings: int = 8192


@dataclass
class Llama4VisionConfig:
    """The vision tower of a multimodal Llama 4 config, field names as in HF `Llama4VisionConfig`.
    Defaults are the released Scout / Maverick tower (HF's class defaults, hidden 768 with
    intermediate 5632 and vision_output_dim 7680, do not fit together and build no working tower)."""

    hidden_size: int = 1408
    hidden_act: str = "gelu"
    num_hidden_layers: int = 34
    num_attention_heads: int = 16
    num_channels: int = 3
    intermediate_size: int = 5632  # the pixel-shuffled width: hidden_size / pixel_shuffle_ratio**2
    vision_output_dim: int = 4096
    image_size: int = 336  # one tile, square
    patch_size: int = 14
    norm_eps: float = 1e-5
    pixel_shuffle_ratio: float = 0.5
    projector_input_dim: int = 4096
    projector_output_dim: int = 4096
    rope_theta: float = 10000.0

    def __post_init__(self) -> None:
        for name in ("image_size", "patch_size"):  # HF allows [h, w]; Llama 4 tiles are square
            v = getattr(self, name)
            if isinstance(v, (list, tuple)):
                if len(v) != 2 or v[0] != v[1]:
                    raise ValueError(f"Llama4VisionConfig.{name}: {v} must be square")
                setattr(self, name, int(v[0]))
        self._validate()

    def _validate(self) -> None:
        def bad(name: str, why: str) -> ValueError:
            return ValueError(f"Llama4VisionConfig.{name}: {why}")

        if self.hidden_act != "gelu":
            raise bad("hidden_act", f"{self.hidden_act!r} unsupported (Llama 4's tower uses 'gelu')")
        if self.hidden_size % self.num_attention_heads:
            raise bad("num_attention_heads",
                      f"{self.num_attention_heads} does not divide hidden_size={self.hidden_size}")
        if self.head_dim % 4:  # 2D RoPE: half the rotated pairs for x, half for y
            raise bad("hidden_size", f"head_dim {self.head_dim} (hidden_size / num_attention_heads) must be a "
                                     "multiple of 4 for the 2D rotary embedding")
        if self.image_size % self.patch_size:
            raise bad("image_size", f"{self.image_size} is not a multiple of patch_size={self.patch_size}")
        s = 1 / self.pixel_shuffle_ratio
        if abs(s - round(s)) > 1e-6 or self.patches_per_side % round(s):
            raise bad("pixel_shuffle_ratio", f"{self.pixel_shuffle_ratio}: 1/ratio must be an integer dividing the "
                                             f"{self.patches_per_side} patches per tile side")
        if self.intermediate_size != self.hidden_size * round(s) ** 2:
            raise bad("intermediate_size", f"{self.intermediate_size} must equal hidden_size / pixel_shuffle_ratio**2 "
                                           f"= {self.hidden_size * round(s) ** 2} (the adapter's input width)")
        if self.projector_input_dim != self.projector_output_dim:
            raise bad("projector_input_dim", f"{self.projector_input_dim} must equal projector_output_dim="
                                             f"{self.projector_output_dim} (the adapter's fc2 is square)")
        if self.vision_output_dim != self.projector_output_dim:
            raise bad("vision_output_dim", f"{self.vision_output_dim} must equal projector_output_dim="
                                           f"{self.projector_output_dim} (the projector's input)")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def patches_per_side(self) -> int:
        return self.image_size // self.patch_size

    @property
    def tokens_per_tile(self) -> int:
        """Image tokens (`<|patch|>`) one tile becomes after the pixel shuffle."""
        return int(self.patches_per_side ** 2 * self.pixel_shuffle_ratio ** 2)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Llama4VisionConfig":
        d = dict(d)
        params = d.pop("rope_parameters", None)  # transformers 5 layout
        if params and "rope_theta" not in d:
            d["rope_theta"] = params.get("rope_theta", cls.rope_theta)
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def to_hf_dict(self) -> dict[str, Any]:
        return dict(dataclasses.asdict(self), model_type="llama4_vision_model")


@dataclass
class Llama4Config:
    """The text part of a Llama 4 config, field names as in HF `Llama4TextConfig`."""

    vocab_size: int = 202048
    hidden_size: int = 5120
    intermediate_size: int = 8192  # each expert and the shared expert
    intermediate_size_mlp: int = 16384  # dense (non-MoE) layers
    num_hidden_layers: int = 48
    num_attention_heads: int = 40
    num_key_value_heads: int = 8
    head_dim: int = 128
    hidden_act: str = "silu"
    max_position_embeddings: int = 10485760
    rms_norm_eps: float = 1e-5
    rope_theta: float = 500000.0
    rope_scaling: RopeScaling | None = None
    num_local_experts: int = 16
    num_experts_per_tok: int = 1
    interleave_moe_layer_step: int = 1
    moe_layers: list[int] | None = None
    no_rope_layers: list[int] | None = None  # 1 = layer USES RoPE (HF's inverted naming)
    no_rope_layer_interval: int = 4
    use_qk_norm: bool = True
    attention_chunk_size: int | None = 8192
    attn_temperature_tuning: bool = True
    floor_scale: int = 8192
    attn_scale: float = 0.1
    attention_bias: bool = False
    tie_word_embeddings: bool = False
    bos_token_id: int | None = 200000
    eos_token_id: int | list[int] | None = field(default_factory=lambda: [200001, 200007, 200008])
    pad_token_id: int | None = 200018
    quantization_config: dict | None = None  # a pre-quantised checkpoint's, as in its config.json
    torch_dtype: str | None = None  # the checkpoint's weight dtype ('bfloat16'); dtype="auto" uses it on GPU
    # Multimodal checkpoints (HF `Llama4Config` top level); vision_config None = a text-only model.
    vision_config: Llama4VisionConfig | None = None
    image_token_index: int = 200092  # <|patch|>: image features replace these positions
    boi_token_index: int = 200080  # <|image_start|>
    eoi_token_index: int = 200081  # <|image_end|>

    def __post_init__(self) -> None:
        if isinstance(self.vision_config, dict):
            self.vision_config = Llama4VisionConfig.from_dict(self.vision_config)
        if isinstance(self.rope_scaling, dict):
            self.rope_scaling = RopeScaling(**self.rope_scaling)
        self.attn_temperature_tuning = bool(self.attn_temperature_tuning)  # released configs store 4
        n = self.num_hidden_layers
        if not self.moe_layers and self.moe_layers != []:
            step = self.interleave_moe_layer_step
            self.moe_layers = list(range(step - 1, n, step)) if step > 0 else []
        if not self.no_rope_layers:  # HF treats an empty list as "use the default"
            self.no_rope_layers = [int((i + 1) % self.no_rope_layer_interval != 0) for i in range(n)]
        self._validate()

    def _validate(self) -> None:
        def bad(name: str, why: str) -> ValueError:
            return ValueError(f"Llama4Config.{name}: {why}")

        if self.num_attention_heads % self.num_key_value_heads:
            raise bad("num_key_value_heads",
                      f"{self.num_key_value_heads} does not divide num_attention_heads={self.num_attention_heads}")
        if not 1 <= self.num_experts_per_tok <= self.num_local_experts:
            raise bad("num_experts_per_tok",
                      f"{self.num_experts_per_tok} not in [1, num_local_experts={self.num_local_experts}]")
        if len(self.no_rope_layers) < self.num_hidden_layers:
            raise bad("no_rope_layers", f"has {len(self.no_rope_layers)} entries for {self.num_hidden_layers} layers")
        if any(not 0 <= i < self.num_hidden_layers for i in self.moe_layers):
            raise bad("moe_layers", f"{self.moe_layers} has indices outside [0, {self.num_hidden_layers})")
        if self.head_dim % 2:
            raise bad("head_dim", f"{self.head_dim} must be even for RoPE")
        if self.hidden_act != "silu":
            raise bad("hidden_act", f"{self.hidden_act!r} unsupported (Llama 4 uses 'silu')")
        if self.attention_chunk_size is not None and self.attention_chunk_size <= 0:
            raise bad("attention_chunk_size", f"{self.attention_chunk_size} must be positive or null")

    # -- derived -------------------------------------------------------------
    def is_moe_layer(self, i: int) -> bool:
        return i in self.moe_layers

    def uses_rope(self, i: int) -> bool:
        return bool(self.no_rope_layers[i])

    @property
    def is_multimodal(self) -> bool:
        return self.vision_config is not None

    @property
    def eos_token_ids(self) -> list[int]:
        e = self.eos_token_id
        return [] if e is None else ([e] if isinstance(e, int) else list(e))

    # -- (de)serialisation -----------------------------------------------------
    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Llama4Config":
        """Accepts a flat llama4_text config or a multimodal llama4 config (text under `text_config`)."""
        if "text_config" in d:
            outer = d
            d = dict(d["text_config"])
            for k in ("tie_word_embeddings", "bos_token_id", "eos_token_id", "pad_token_id", "quantization_config",
                      "torch_dtype", "dtype"):
                if k not in d and k in outer:
                    d[k] = outer[k]
            for k in ("vision_config", "image_token_index", "boi_token_index", "eoi_token_index"):
                if outer.get(k) is not None:
                    d[k] = outer[k]
        d = dict(d)
        if "dtype" in d:  # transformers 5 writes `dtype`, the released checkpoints `torch_dtype`
            d.setdefault("torch_dtype", d.pop("dtype"))
        if d.get("torch_dtype") is not None:
            d["torch_dtype"] = str(d["torch_dtype"]).removeprefix("torch.")
        params = d.pop("rope_parameters", None)  # transformers 5 layout
        if params:
            d.setdefault("rope_theta", params.get("rope_theta", cls.rope_theta))
            if params.get("rope_type", "default") == "llama3" and not d.get("rope_scaling"):
                d["rope_scaling"] = params
        rs = d.get("rope_scaling")
        if rs is not None:
            kind = rs.get("rope_type", rs.get("type", "llama3"))
            if kind == "default":
                d["rope_scaling"] = None
            elif kind != "llama3":
                raise ValueError(f"config.json: rope_scaling type {kind!r} unsupported (only 'llama3')")
            else:
                d["rope_scaling"] = {f.name: rs[f.name] for f in dataclasses.fields(RopeScaling) if f.name in rs}
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike) -> "Llama4Config":
        path = os.fspath(path)
        file = os.path.join(path, "config.json") if os.path.isdir(path) else path
        try:
            with open(file) as f:
                raw = json.load(f)
        except FileNotFoundError:
            raise FileNotFoundError(f"{file}: no config.json (expected a Llama 4 checkpoint folder)") from None
        except json.JSONDecodeError as e:
            raise ValueError(f"{file}: not valid JSON ({e})") from None
        mt = raw.get("model_type")
        if mt not in (None, "llama4", "llama4_text"):
            raise ValueError(f"{file}: model_type {mt!r} is not a Llama 4 model")
        return cls.from_dict(raw)

    def to_hf_dict(self) -> dict[str, Any]:
        """A flat `llama4_text` config.json that transformers and our loader both read: the text part
        only (a multimodal config's full form is to_hf_multimodal_dict)."""
        d = dataclasses.asdict(self)
        for k in ("vision_config", "image_token_index", "boi_token_index", "eoi_token_index"):
            del d[k]
        rs = d.pop("rope_scaling")
        d["rope_scaling"] = None if rs is None else {"rope_type": "llama3", **rs}
        for k in ("quantization_config", "torch_dtype"):
            if d[k] is None:
                del d[k]
        d["model_type"] = "llama4_text"
        d["architectures"] = ["Llama4ForCausalLM"]
        return d

    def to_hf_multimodal_dict(self) -> dict[str, Any]:
        """A `llama4` (Llama4ForConditionalGeneration) config.json: text under `text_config`."""
        if self.vision_config is None:
            raise ValueError("Llama4Config.vision_config is None: a text-only config has no multimodal form "
                             "(use to_hf_dict)")
        text = self.to_hf_dict()
        del text["architectures"]
        out = {"model_type": "llama4", "architectures": ["Llama4ForConditionalGeneration"], "text_config": text,
               "vision_config": self.vision_config.to_hf_dict(), "image_token_index": self.image_token_index,
               "boi_token_index": self.boi_token_index, "eoi_token_index": self.eoi_token_index,
               "tie_word_embeddings": self.tie_word_embeddings}
        for k in ("quantization_config", "torch_dtype"):  # top level only, as the released configs have them
            if k in text:
                out[k] = text.pop(k)
        return out


# The released checkpoints' vision_config (Scout and Maverick share it; transformers' defaults differ),
# written out rather than left to Llama4VisionConfig's defaults.
_RELEASED_VISION = dict(hidden_size=1408, num_hidden_layers=34, num_attention_heads=16, intermediate_size=5632,
                        vision_output_dim=4096, image_size=336, patch_size=14, pixel_shuffle_ratio=0.5,
                        projector_input_dim=4096, projector_output_dim=4096, norm_eps=1e-5, rope_theta=10000.0)
_RELEASED = dict(hidden_size=5120, num_hidden_layers=48, num_attention_heads=40, num_key_value_heads=8,
                 head_dim=128, intermediate_size=8192, intermediate_size_mlp=16384, vocab_size=202048,
                 vision_config=_RELEASED_VISION, image_token_index=200092, boi_token_index=200080,
                 eoi_token_index=200081)
# A tiny tower of the same structure: 56 x 56 tiles of 4 x 4 patches -> 4 image tokens per tile.
# Image token ids: the tiny tokenizer's <|patch|> / <|image_start|> / <|image_end|> (assets/tiny_tokenizer).
_TINY_VISION = dict(vision_config=dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                       intermediate_size=256, vision_output_dim=128, image_size=56, patch_size=14,
                                       pixel_shuffle_ratio=0.5, projector_input_dim=128, projector_output_dim=128),
                    image_token_index=511, boi_token_index=506, eoi_token_index=507)

PRESETS: dict[str, dict[str, Any]] = {
    "scout": dict(_RELEASED, num_local_experts=16, interleave_moe_layer_step=1, use_qk_norm=True,
                  rope_scaling=dict(factor=16.0, low_freq_factor=1.0, high_freq_factor=1.0,
                                    original_max_position_embeddings=8192),
                  max_position_embeddings=10485760),
    "maverick": dict(_RELEASED, num_local_experts=128, interleave_moe_layer_step=2, use_qk_norm=False,
                     rope_scaling=None, max_position_embeddings=1048576),
    # Same structure, small shapes: 4 layers so that one is NoPE; chunk 32 so short prompts cross chunks.
    "tiny-scout": dict(hidden_size=128, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                       head_dim=32, intermediate_size=96, intermediate_size_mlp=192, vocab_size=512,
                       num_local_experts=8, interleave_moe_layer_step=1, use_qk_norm=True,
                       rope_scaling=dict(factor=16.0, low_freq_factor=1.0, high_freq_factor=1.0,
                                         original_max_position_embeddings=64),
                       attention_chunk_size=32, floor_scale=16, max_position_embeddings=4096,
                       bos_token_id=1, eos_token_id=[2, 3, 4], pad_token_id=0, **_TINY_VISION),
    "tiny-maverick": dict(hidden_size=128, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                          head_dim=32, intermediate_size=96, intermediate_size_mlp=192, vocab_size=512,
                          num_local_experts=16, interleave_moe_layer_step=2, use_qk_norm=False,
                          rope_scaling=None, attention_chunk_size=32, floor_scale=16,
                          max_position_embeddings=4096, bos_token_id=1, eos_token_id=[2, 3, 4], pad_token_id=0,
                          **_TINY_VISION),
}


def is_preset(name: str | os.PathLike) -> bool:
    """A preset name, unless a folder of that name exists (a checkpoint wins)."""
    name = os.fspath(name)
    return name in PRESETS and not os.path.isdir(name)


def load_config(path_or_preset: str | os.PathLike) -> Llama4Config:
    return preset(os.fspath(path_or_preset)) if is_preset(path_or_preset) else Llama4Config.from_pretrained(path_or_preset)


def preset(name: str, **overrides: Any) -> Llama4Config:
    if name not in PRESETS:
        raise KeyError(f"unknown preset {name!r}; known: {sorted(PRESETS)}")
    return Llama4Config(**{**PRESETS[name], **overrides})


FP8_FORMAT_NAMES = tuple(FP8_FORMATS)
INT4_GROUP_SIZES = (32, 64, 128)


@dataclass
class QuantConfig:
    """How weights, activations and the KV cache are quantised. One object, passed down; never flags.

    method: None (no weight quantisation), "fp8" (w8a8) or "int4" (weight-only w4a16, group-wise).
    group_size: int4 only: input columns sharing one scale (and zero point): 32, 64 or 128.
    zero_point: int4 only: False = symmetric (zero point 8 of 0..15), True = a uint4 zero point per group.
    fp8_format: "e4m3fn" | "e4m3fnuz" | None (None = the platform's format, see platform.fp8_format()).
    weight_block: None = per-output-channel scales; (128, 128) = block scales.
    activation: "per_token" dynamic scales (the only scheme for now).
    kv_cache_dtype: "auto" (model dtype) or "fp8".
    ignore: module-name patterns kept in high precision (from a checkpoint's quantization_config).
    """

    method: str | None = None
    fp8_format: str | None = None
    weight_block: tuple[int, int] | None = None
    activation: str = "per_token"
    kv_cache_dtype: str = "auto"
    ignore: list[str] = field(default_factory=list)
    group_size: int = 128
    zero_point: bool = False

    def __post_init__(self) -> None:
        if self.method not in (None, "fp8", "int4"):
            raise ValueError(f"QuantConfig.method: {self.method!r} unsupported (None, 'fp8' or 'int4')")
        if self.method == "int4":
            # the int4 kernels unroll whole groups of 32 packed columns (ops/int4.py)
            if isinstance(self.group_size, bool) or self.group_size not in INT4_GROUP_SIZES:
                raise ValueError(f"QuantConfig.group_size: {self.group_size!r} not in {INT4_GROUP_SIZES}")
            if not isinstance(self.zero_point, bool):
                raise ValueError(f"QuantConfig.zero_point: {self.zero_point!r} must be True or False")
            if self.weight_block is not None:
                raise ValueError(f"QuantConfig.weight_block: {self.weight_block!r} is FP8 only; int4 uses group_size")
        if self.fp8_format not in (None, *FP8_FORMAT_NAMES):
            raise ValueError(f"QuantConfig.fp8_format: {self.fp8_format!r} not in {FP8_FORMAT_NAMES}")
        if self.kv_cache_dtype not in ("auto", "fp8"):
            raise ValueError(f"QuantConfig.kv_cache_dtype: {self.kv_cache_dtype!r} not in ('auto', 'fp8')")
        if self.weight_block is not None:
            self.weight_block = tuple(self.weight_block)  # type: ignore[assignment]
