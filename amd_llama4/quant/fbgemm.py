"""Meta's `fbgemm_fp8` checkpoint layout (Llama-4-Maverick-17B-128E-Instruct-FP8) on our FP8 modules.

As transformers' FbgemmFp8Linear / FbgemmFp8Llama4TextExperts save it (all fp8 is float8_e4m3fn):
  linear   `X.weight` [out, in] fp8, `X.weight_scale` [out, 1] fp32                  = FP8Linear
  experts  `experts.gate_up_proj` [E, H, 2I] fp8, `experts.gate_up_proj_scale` [E, 1, 2I] fp32  = FP8Experts
           `experts.down_proj` [E, I, H] fp8, `experts.down_proj_scale` [E, H, 1] fp32  (FP8Experts: [E, 1, H])
  `input_scale_ub` is a non-persistent buffer (never in the files): config.json's `activation_scale_ub`.
config.json `quantization_config`: quant_method "fbgemm_fp8", activation_scale_ub, modules_to_not_convert
(module names, usually under `language_model.`, kept in bf16).
"""
from __future__ import annotations

import re

import torch

_DOWN_SCALE = re.compile(r"\.experts\.down_proj_scale$")


def same_or_fbgemm_shape(name: str, stored: tuple[int, ...], expect: tuple[int, ...]) -> bool:
    """Whether a checkpoint tensor of shape `stored` can fill parameter `name` of shape `expect`."""
    return stored == expect or (bool(_DOWN_SCALE.search(name)) and len(stored) == 3 and stored[2] == 1
                                and expect == (stored[0], 1, stored[1]))


def to_model_layout(name: str, t: torch.Tensor, expect: tuple[int, ...]) -> torch.Tensor:
    """fbgemm's down_proj_scale [E, H, 1] -> ours [E, 1, H]; any other tensor unchanged."""
    if tuple(t.shape) != expect and _DOWN_SCALE.search(name):
        return t.transpose(1, 2)
    return t


def to_checkpoint_layout(name: str, t: torch.Tensor) -> torch.Tensor:
    """The inverse, for writing: our down_proj_scale [E, 1, H] -> fbgemm's [E, H, 1]."""
    return t.transpose(1, 2).contiguous() if _DOWN_SCALE.search(name) else t


def activation_scale_ub(qc: dict) -> float | None:
    """The per-token activation scale upper bound of an fbgemm_fp8 config, validated."""
    ub = qc.get("activation_scale_ub")
    if ub is not None and (isinstance(ub, bool) or not isinstance(ub, (int, float)) or ub <= 0):
        raise ValueError(f"config.json: quantization_config.activation_scale_ub {ub!r} must be a positive number")
    return None if ub is None else float(ub)
