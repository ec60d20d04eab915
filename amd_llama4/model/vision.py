"""Llama 4 vision tower, pure torch; every kernel goes through `amd_llama4.ops` (ops/vision.py).

Same parameter names and math as HF's `Llama4VisionModel` (`vision_model.*` in a checkpoint):
unfold patch embedding, class token (last), learned positional embedding, pre LayerNorm, encoder
layers (non-causal attention with the 2D rotary embedding, GELU MLP), post LayerNorm, then the
pixel-shuffle adapter MLP. Shapes: N tiles, P tokens per tile, C hidden.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from amd_llama4.config import Llama4VisionConfig
from amd_llama4.model.llama4 import Linear, project
from amd_llama4.ops.vision import gelu, layer_norm, vision_attention, vision_rope, vision_rope_freqs

# LayerNorm eps: HF builds every tower norm as nn.LayerNorm(hidden) (eps 1e-5, the released norm_eps).


class LayerNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return layer_norm(x, self.weight, self.bias, self.eps)


class UnfoldConvolution(nn.Module):
    """Non-overlapping patches, each flattened channel-major (c, dy, dx) as nn.Unfold does, then one
    linear layer without bias."""

    def __init__(self, cfg: Llama4VisionConfig):
        super().__init__()
        self.patch = cfg.patch_size
        self.linear = Linear(cfg.num_channels * cfg.patch_size ** 2, cfg.hidden_size, bias=False)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        N, C, Hp, Wp = pixels.shape
        p = self.patch
        x = pixels.reshape(N, C, Hp // p, p, Wp // p, p).permute(0, 2, 4, 1, 3, 5)  # [N, rows, cols, C, p, p]
        return self.linear(x.reshape(N, (Hp // p) * (Wp // p), C * p * p))  # [N, P, C_hidden]


class VisionAttention(nn.Module):
    def __init__(self, cfg: Llama4VisionConfig):
        super().__init__()
        self.n_heads, self.head_dim = cfg.num_attention_heads, cfg.head_dim
        self.scale = self.head_dim ** -0.5
        h = cfg.hidden_size
        self.q_proj = Linear(h, h, bias=True)
        self.k_proj = Linear(h, h, bias=True)
        self.v_proj = Linear(h, h, bias=True)
        self.o_proj = Linear(h, h, bias=True)

    def forward(self, x: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
        N, P, _ = x.shape
        q, k, v = project(x, self.q_proj, self.k_proj, self.v_proj).view(N, P, 3, self.n_heads, self.head_dim).unbind(2)
        q, k = vision_rope(q, freqs), vision_rope(k, freqs)
        return self.o_proj(vision_attention(q, k, v, self.scale).reshape(N, P, -1))


class VisionMLP(nn.Module):
    def __init__(self, cfg: Llama4VisionConfig):
        super().__init__()
        self.fc1 = Linear(cfg.hidden_size, cfg.intermediate_size, bias=True)
        self.fc2 = Linear(cfg.intermediate_size, cfg.hidden_size, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(gelu(self.fc1(x)))


class VisionEncoderLayer(nn.Module):
    def __init__(self, cfg: Llama4VisionConfig):
        super().__init__()
        self.self_attn = VisionAttention(cfg)
        self.mlp = VisionMLP(cfg)
        self.input_layernorm = LayerNorm(cfg.hidden_size, cfg.norm_eps)
        self.post_attention_layernorm = LayerNorm(cfg.hidden_size, cfg.norm_eps)

    def forward(self, x: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), freqs)
        return x + self.mlp(self.post_attention_layernorm(x))


class VisionEncoder(nn.Module):
    def __init__(self, cfg: Llama4VisionConfig):
        super().__init__()
        self.layers = nn.ModuleList(VisionEncoderLayer(cfg) for _ in range(cfg.num_hidden_layers))

    def forward(self, x: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x, freqs)
        return x


def pixel_shuffle(x: torch.Tensor, ratio: float) -> torch.Tensor:
    """x: [N, n*n, C] (an n x n patch grid, row-major) -> [N, (n/s)**2, C*s*s], s = 1/ratio: each s x s
    block of patches becomes one token, channels ordered (row in block, column in block, c) as HF's
    pixel_shuffle leaves them."""
    N, P, C = x.shape
    n, s = round(P ** 0.5), round(1 / ratio)
    x = x.reshape(N, n // s, s, n // s, s, C).permute(0, 1, 3, 2, 4, 5)  # [N, row', col', dy, dx, C]
    return x.reshape(N, (n // s) ** 2, s * s * C)


class VisionMLP2(nn.Module):
    """The adapter after the pixel shuffle: gelu(fc2(gelu(fc1(x)))), no biases."""

    def __init__(self, cfg: Llama4VisionConfig):
        super().__init__()
        self.fc1 = Linear(cfg.intermediate_size, cfg.projector_input_dim, bias=False)
        self.fc2 = Linear(cfg.projector_output_dim, cfg.projector_output_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return gelu(self.fc2(gelu(self.fc1(x))))


class PixelShuffleMLP(nn.Module):
    def __init__(self, cfg: Llama4VisionConfig):
        super().__init__()
        self.ratio = cfg.pixel_shuffle_ratio
        self.mlp = VisionMLP2(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(pixel_shuffle(x, self.ratio))


class Llama4VisionModel(nn.Module):
    def __init__(self, cfg: Llama4VisionConfig):
        super().__init__()
        self.config = cfg
        num_positions = cfg.patches_per_side ** 2 + 1  # the patches and the class token
        self.patch_embedding = UnfoldConvolution(cfg)
        self.class_embedding = nn.Parameter(torch.empty(cfg.hidden_size))
        self.positional_embedding_vlm = nn.Parameter(torch.empty(num_positions, cfg.hidden_size))
        self.layernorm_pre = LayerNorm(cfg.hidden_size, cfg.norm_eps)
        self.layernorm_post = LayerNorm(cfg.hidden_size, cfg.norm_eps)
        self.model = VisionEncoder(cfg)
        self.vision_adapter = PixelShuffleMLP(cfg)
        # fp32 complex and not a buffer (model.to(bf16) must not round it); built on first use on each
        # device, since the model is constructed on the meta device.
        self._freqs_by_device: dict[torch.device, torch.Tensor] = {}

    def rope_freqs(self, device: torch.device) -> torch.Tensor:
        if device not in self._freqs_by_device:
            c = self.config
            self._freqs_by_device[device] = vision_rope_freqs(c.patches_per_side, c.head_dim, c.rope_theta).to(device)
        return self._freqs_by_device[device]

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """pixel_values: [N, C, S, S] tiles (S = image_size) -> [N, tokens_per_tile, projector_output_dim]."""
        c = self.config
        if pixel_values.dim() != 4 or tuple(pixel_values.shape[1:]) != (c.num_channels, c.image_size, c.image_size):
            raise ValueError(f"pixel_values: shape {tuple(pixel_values.shape)}, expected [num_tiles, "
                             f"{c.num_channels}, {c.image_size}, {c.image_size}] (vision_config.image_size tiles)")
        x = self.patch_embedding(pixel_values.to(self.class_embedding.dtype))  # [N, P, C]
        x = torch.cat([x, self.class_embedding.expand(x.shape[0], 1, -1)], dim=1)  # class token last
        x = self.layernorm_pre(x + self.positional_embedding_vlm)
        x = self.layernorm_post(self.model(x, self.rope_freqs(x.device)))
        return self.vision_adapter(x[:, :-1])  # the class token is dropped

