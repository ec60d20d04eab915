"""Llama 4 text model (Scout / Maverick), pure torch; every kernel goes through `amd_llama4.ops`.

Parameter names match Hugging Face checkpoints (`model.layers.N.self_attn.q_proj.weight`, ...),
so a state dict loads as is. Shapes: B batch, S new tokens, L keys, H hidden, D head_dim.
"""
from __future__ import annotations

from typing import Protocol

import torch
import torch.nn as nn

from amd_llama4 import ops
from amd_llama4.config import Llama4Config
from amd_llama4.parallel.tp import SINGLE, Parallel, check_parallel, local_shapes


class KVCache(Protocol):
    """What attention needs from a cache (the engine's step views of its paged cache implement it;
    each view picks its own attention path, so the model holds no path check)."""

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor,
               scale: float, chunk_size: int | None) -> torch.Tensor:
        """Store k, v [B, S, Hkv, D] of the new tokens at `positions` [B, S], then attend q [B, S, Hq, D]
        over every key this layer may see (ops.attention's masking) -> [B, S, Hq, D]. The engine's
        steps pass B = 1: the step's ragged tokens of many sequences flattened into one row, which the
        view splits by its own cu_seqlens (RoPE, temperature and MoE are per token)."""


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ops.rms_norm(x, self.weight, self.eps)


class Linear(nn.Linear):
    """nn.Linear (same parameters and state-dict names) whose product goes through `ops.linear`,
    so the decode step's few-row products can take the native weight-streaming kernel."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ops.linear(x, self.weight, self.bias)


def project(x: torch.Tensor, *mods: nn.Module) -> torch.Tensor:
    """[mods[0](x) | mods[1](x) | ...] along the last dim: several projections of one input. Plain
    `Linear` layers run as one ops.linear_concat (one kernel call for q/k/v or gate/up); others
    (FP8Linear) one by one."""
    if not all(type(m) is Linear for m in mods):
        return torch.cat([m(x) for m in mods], dim=-1)
    biases = None if all(m.bias is None for m in mods) else [m.bias for m in mods]
    return ops.linear_concat(x, [m.weight for m in mods], biases)


class MLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x)). The dense FFN and the MoE shared expert.
    Under tensor parallelism `inter` is this rank's slice and the output a partial sum, reduced here
    for the dense FFN (`par`) and by the MoE layer for the shared expert (par=None)."""

    def __init__(self, hidden: int, inter: int, par: Parallel | None = None):
        super().__init__()
        self.par = par
        self.gate_proj = Linear(hidden, inter, bias=False)
        self.up_proj = Linear(hidden, inter, bias=False)
        self.down_proj = Linear(inter, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.down_proj(ops.silu_and_mul(project(x, self.gate_proj, self.up_proj)))
        return self.par.all_reduce(out) if self.par is not None else out


class Experts(nn.Module):
    """Routed experts, HF fused layout: gate_up_proj [E, H, 2I] ([gate | up] along the last dim) and
    down_proj [E, I, H]. Stored input-major (contiguous), or after output_major_() as transposed views
    of contiguous [E, 2I, H] / [E, H, I]: the same logical tensors with each output's weights
    contiguous, which a CPU model uses (model/loader.py) because its decode step then streams one
    dot product per output row (csrc/cpu/moe_stream.cpp)."""

    def __init__(self, num_experts: int, hidden: int, inter: int):
        super().__init__()
        self.gate_up_proj = nn.Parameter(torch.empty(num_experts, hidden, 2 * inter))  # [E, H, 2I]
        self.down_proj = nn.Parameter(torch.empty(num_experts, inter, hidden))  # [E, I, H]

    def output_major_(self) -> "Experts":
        """Re-create both parameters output-major (before loading: their values are not kept)."""
        for name in ("gate_up_proj", "down_proj"):
            p = getattr(self, name)
            E, A, B = p.shape
            store = torch.empty(E, B, A, dtype=p.dtype, device=p.device)
            setattr(self, name, nn.Parameter(store.transpose(1, 2), requires_grad=p.requires_grad))
        return self

    def forward(self, x: torch.Tensor, topk_weights: torch.Tensor, topk_ids: torch.Tensor) -> torch.Tensor:
        return ops.fused_moe(x, self.gate_up_proj, self.down_proj, topk_weights, topk_ids)


# Expert parallel up to this many tokens per step computes every pair with non-local ones zeroed
# (sync-free, decode); above it, the exact local pairs via nonzero (prefill, where work dominates).
_EP_MASKED_ROWS = 256


class MoE(nn.Module):
    """Sigmoid top-k router + sparse routed experts (weight on the input) + shared expert."""

    def __init__(self, cfg: Llama4Config, par: Parallel = SINGLE):
        super().__init__()
        s = local_shapes(cfg, par)
        self.par, self.top_k = par, cfg.num_experts_per_tok
        self.expert_range = (s.expert_start, s.expert_start + s.num_experts)
        self.router = Linear(cfg.hidden_size, cfg.num_local_experts, bias=False)
        self.experts = Experts(s.num_experts, cfg.hidden_size, s.expert_inter)
        self.shared_expert = MLP(cfg.hidden_size, s.inter)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x = x.reshape(-1, shape[-1])  # [T, H]
        weights, ids = ops.moe_topk_sigmoid(self.router(x), self.top_k)  # [T, k] fp32, int32
        out = self.shared_expert(x)
        if self.par.expert_parallel and self.par.enabled and x.shape[0] <= _EP_MASKED_ROWS:
            out = out + self._masked_local_experts(x, weights, ids)
        elif self.par.expert_parallel and self.par.enabled:
            out = out.index_add_(0, *self._local_experts(x, weights, ids))
        else:
            out = out + self.experts(x, weights, ids)  # Experts or quant.fp8.FP8Experts
        return self.par.all_reduce(out).view(shape)

    def _masked_local_experts(self, x, weights, ids):
        """Expert parallel, few tokens (decode): pairs routed to other ranks go to local expert 0 with
        weight 0, an exact zero (the weight scales the expert input), so no data-dependent size
        (`nonzero`) syncs the host and the step stays capturable; costs ep x the routed rows."""
        lo, hi = self.expert_range
        mine = (ids >= lo) & (ids < hi)  # [T, k]
        return self.experts(x, torch.where(mine, weights, 0.0), torch.where(mine, ids - lo, 0).to(torch.int32))

    def _local_experts(self, x, weights, ids):
        """Expert parallel: only the (token, slot) pairs routed to this rank's experts, one row each
        (exact, since each pair's contribution is independent) -> (token index, partial output)."""
        lo, hi = self.expert_range
        pair = ((ids >= lo) & (ids < hi)).nonzero()  # [n, 2] (token, slot)
        tok, slot = pair[:, 0], pair[:, 1]
        local_ids = (ids[tok, slot] - lo).to(torch.int32)[:, None]
        return tok, self.experts(x.index_select(0, tok), weights[tok, slot][:, None], local_ids)


class Attention(nn.Module):
    def __init__(self, cfg: Llama4Config, layer: int, par: Parallel = SINGLE):
        super().__init__()
        s = local_shapes(cfg, par)
        self.layer, self.par = layer, par
        self.n_heads, self.n_kv, self.head_dim = s.n_heads, s.n_kv_heads, cfg.head_dim
        self.use_rope = cfg.uses_rope(layer)
        # RoPE layers are chunked-local; NoPE layers see the whole causal context.
        self.chunk_size = cfg.attention_chunk_size if self.use_rope else None
        self.qk_norm_eps = cfg.rms_norm_eps if (cfg.use_qk_norm and self.use_rope) else None
        self.temperature = (cfg.floor_scale, cfg.attn_scale) if (cfg.attn_temperature_tuning
                                                                  and not self.use_rope) else None
        self.scale = self.head_dim ** -0.5
        bias = cfg.attention_bias
        self.q_proj = Linear(cfg.hidden_size, self.n_heads * self.head_dim, bias=bias)
        self.k_proj = Linear(cfg.hidden_size, self.n_kv * self.head_dim, bias=bias)
        self.v_proj = Linear(cfg.hidden_size, self.n_kv * self.head_dim, bias=bias)
        self.o_proj = Linear(self.n_heads * self.head_dim, cfg.hidden_size, bias=bias)

    def forward(self, x: torch.Tensor, positions: torch.Tensor, inv_freq: torch.Tensor,
                cache: KVCache | None) -> torch.Tensor:
        B, S, _ = x.shape
        q, k, v = project(x, self.q_proj, self.k_proj, self.v_proj).split(
            [self.n_heads * self.head_dim, self.n_kv * self.head_dim, self.n_kv * self.head_dim], dim=-1)
        q = q.view(B, S, self.n_heads, self.head_dim)
        k = k.view(B, S, self.n_kv, self.head_dim)
        v = v.view(B, S, self.n_kv, self.head_dim)
        if self.use_rope:
            q = ops.apply_rope(q, positions, inv_freq)
            k = ops.apply_rope(k, positions, inv_freq)
            if self.qk_norm_eps is not None:  # weightless, per head, after RoPE
                q = ops.rms_norm(q, None, self.qk_norm_eps)
                k = ops.rms_norm(k, None, self.qk_norm_eps)
        if self.temperature is not None:  # NoPE: scale queries by absolute position
            s = ops.temperature_scale(positions, *self.temperature)
            q = (q * s[:, :, None, None]).to(q.dtype)
        if cache is None:
            out = ops.attention(q, k, v, positions, positions, self.scale, self.chunk_size)
        else:
            out = cache.attend(self.layer, q, k, v, positions, self.scale, self.chunk_size)
        return self.par.all_reduce(self.o_proj(out.reshape(B, S, -1)))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: Llama4Config, layer: int, par: Parallel = SINGLE):
        super().__init__()
        self.self_attn = Attention(cfg, layer, par)
        self.feed_forward = (MoE(cfg, par) if cfg.is_moe_layer(layer)
                             else MLP(cfg.hidden_size, local_shapes(cfg, par).inter_mlp, par))
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(self, x, positions, inv_freq, cache):
        x = x + self.self_attn(self.input_layernorm(x), positions, inv_freq, cache)
        return x + self.feed_forward(self.post_attention_layernorm(x))


class Llama4TextModel(nn.Module):
    def __init__(self, cfg: Llama4Config, par: Parallel = SINGLE):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg, i, par) for i in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        # fp32 on purpose and not a buffer, so model.to(bf16) cannot round the frequencies.
        self.inv_freq = ops.rope_inv_freq(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling)
        self._inv_freq_by_device: dict[torch.device, torch.Tensor] = {}

    def forward(self, input_ids, positions, cache, inputs_embeds=None):
        # inputs_embeds [B, S, H]: embeddings made by the caller (image features scattered in)
        x = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds  # [B, S, H], no scaling
        dev = x.device
        if dev not in self._inv_freq_by_device:
            self._inv_freq_by_device[dev] = self.inv_freq.to(dev)
        for layer in self.layers:
            x = layer(x, positions, self._inv_freq_by_device[dev], cache)
        return self.norm(x)


class Llama4ForCausalLM(nn.Module):
    def __init__(self, cfg: Llama4Config, par: Parallel = SINGLE):
        super().__init__()
        check_parallel(cfg, par)
        self.config, self.parallel = cfg, par
        self.model = Llama4TextModel(cfg, par)
        self.lm_head = Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def hidden_states(self, input_ids: torch.Tensor, positions: torch.Tensor | None = None,
                      cache: KVCache | None = None, inputs_embeds: torch.Tensor | None = None) -> torch.Tensor:
        """input_ids: [B, S] -> final-norm hidden states [B, S, H]. positions default to 0..S-1.
        inputs_embeds [B, S, H], when given, replaces the token embeddings of input_ids."""
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be [batch, seq], got shape {tuple(input_ids.shape)}")
        if positions is None:
            positions = torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids)
        elif positions.shape != input_ids.shape:
            raise ValueError(f"positions {tuple(positions.shape)} must match input_ids {tuple(input_ids.shape)}")
        if inputs_embeds is not None and inputs_embeds.shape[:2] != input_ids.shape:
            raise ValueError(f"inputs_embeds {tuple(inputs_embeds.shape)} must be input_ids "
                             f"{tuple(input_ids.shape)} + [hidden_size]")
        return self.model(input_ids, positions, cache, inputs_embeds)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden).float()

    @torch.no_grad()
    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor | None = None,
                cache: KVCache | None = None) -> torch.Tensor:
        """input_ids: [B, S] -> fp32 logits [B, S, V]. Without cache: a full causal forward."""
        return self.compute_logits(self.hidden_states(input_ids, positions, cache))

    def init_random(self, seed: int = 0, std: float = 0.02) -> "Llama4ForCausalLM":
        """Deterministic random weights (presets, tests): normal(0, std), norms at 1."""
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, p in self.named_parameters():
                if name.endswith("norm.weight"):
                    p.fill_(1.0)
                else:
                    p.copy_(torch.randn(p.shape, generator=g) * std)
        return self
