"""Ops used by the model and engine. Each op is a torch reference registered as the 'torch'
backend; faster backends (native `_C`, Triton) register themselves; `dispatch.resolve` picks."""
from amd_llama4.ops.activation import silu_and_mul
from amd_llama4.ops.attention import attention, attention_mask, temperature_scale
from amd_llama4.ops.dispatch import available, preference, register, resolve
from amd_llama4.ops.linear import linear, linear_concat
from amd_llama4.ops.moe import fused_moe, moe_align_block_size, moe_topk_sigmoid
from amd_llama4.ops.norm import rms_norm
from amd_llama4.ops.rope import apply_rope, rope_inv_freq

__all__ = ["silu_and_mul", "attention", "attention_mask", "temperature_scale", "available", "preference",
           "register", "resolve", "linear", "linear_concat", "fused_moe", "moe_align_block_size",
           "moe_topk_sigmoid", "rms_norm", "apply_rope", "rope_inv_freq"]
from amd_llama4.ops.fp8 import FP8_MAX, dequantize_fp8, fn_to_fnuz, quantize_fp8  # noqa: E402

__all__ += ["FP8_MAX", "dequantize_fp8", "fn_to_fnuz", "quantize_fp8"]
from amd_llama4.ops.fp8_gemm import fp8_gemm  # noqa: E402
from amd_llama4.ops.moe_fp8 import fused_moe_fp8  # noqa: E402
from amd_llama4.ops.paged_attention import paged_attention, paged_attention_decode  # noqa: E402

__all__ += ["fp8_gemm", "fused_moe_fp8", "paged_attention", "paged_attention_decode"]
from amd_llama4.ops.vision import gelu, layer_norm, vision_attention, vision_rope, vision_rope_freqs  # noqa: E402

__all__ += ["gelu", "layer_norm", "vision_attention", "vision_rope", "vision_rope_freqs"]
