"""Capacity and roofline planner: what fits on N GPUs, and how fast it can be at best.

Memory per GPU = weights / N + KV cache / min(N, kv_heads) + activation workspace.
KV: every 4th layer is global (NoPE) and keeps the whole context; the other layers are
chunked-local and never need more than one chunk (attention_chunk_size tokens) per sequence.
Speeds are roofline upper bounds: each step takes max(bytes / HBM bandwidth, FLOPs / peak),
all N GPUs working in parallel, communication and kernel inefficiency ignored.
Units: bytes, GB = 1e9 bytes (vendors quote memory in these), tokens/s.
`model` is a preset or a checkpoint folder; for a folder, `checkpoint_report` adds what its
safetensors headers hold and the bytes the loader places on each GPU (headers only, no data read).
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field

from amd_llama4.config import Llama4Config, is_preset, load_config
from amd_llama4.platform import DEVICE_SPECS
from amd_llama4.tools.planner_vision import format_vision, plan_vision

# bytes per weight; int4 carries a bf16 scale per group of 128 weights (weight-only, GPTQ/AWQ-style)
WEIGHT_BYTES = {"bf16": 2.0, "fp8": 1.0, "int4": 0.5 + 2.0 / 128}
KV_BYTES = {"bf16": 2, "fp8": 1}
GPUS_PER_NODE = 8
MOE_ACT_COPIES = 2  # the MoE path holds expert-sorted copies of its input and output


@dataclass
class PlanInput:
    model: str = "scout"
    gpu: str = "mi300x"
    num_gpus: int = 8
    weights: str = "bf16"
    kv: str = "bf16"
    context: int = 131072
    concurrency: int = 1
    gpu_memory_utilization: float = 0.90  # share of HBM the engine may use (the rest: runtime, fragmentation)
    max_batched_tokens: int = 8192  # tokens per forward step (prefill chunk), sizes the workspace
    runtime_overhead_gb: float = 2.0  # per GPU: HIP/CUDA context, RCCL buffers, graphs
    images_per_prompt: int = 0  # multimodal checkpoints: images per prompt (their tokens are part of `context`)

    def __post_init__(self) -> None:
        if not (is_preset(self.model) or os.path.isdir(self.model)):
            raise ValueError(f"plan: model {self.model!r} is neither a preset nor a checkpoint folder")
        if self.gpu not in DEVICE_SPECS:
            raise ValueError(f"plan: gpu {self.gpu!r} unknown; known: {sorted(DEVICE_SPECS)}")
        if self.weights not in WEIGHT_BYTES:
            raise ValueError(f"plan: weights {self.weights!r} not in {sorted(WEIGHT_BYTES)}")
        if self.kv not in KV_BYTES:
            raise ValueError(f"plan: kv {self.kv!r} not in {sorted(KV_BYTES)}")
        for name in ("num_gpus", "context", "concurrency", "max_batched_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"plan: {name} must be >= 1, got {getattr(self, name)}")
        if self.images_per_prompt < 0:
            raise ValueError(f"plan: images_per_prompt must be >= 0, got {self.images_per_prompt}")
        if not 0 < self.gpu_memory_utilization <= 1:
            raise ValueError(f"plan: gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}")


@dataclass
class ParamCounts:
    """Parameter counts by group (the text model; the vision encoder is not served here)."""

    embedding: int
    lm_head: int
    attention: int  # q, k, v, o over all layers
    experts: int  # routed experts over all MoE layers
    shared_expert: int
    dense_mlp: int
    router: int
    norms: int
    moe_layers: int
    expert_params: int  # one expert of one layer (gate, up, down)
    extra: dict = field(default_factory=dict)

    @property
    def linear(self) -> int:
        """Weights that FP8/INT4 quantisation applies to (embedding, lm_head, router, norms stay bf16)."""
        return self.attention + self.experts + self.shared_expert + self.dense_mlp

    @property
    def high_precision(self) -> int:
        return self.embedding + self.lm_head + self.router + self.norms

    @property
    def total(self) -> int:
        return self.linear + self.high_precision


def param_counts(cfg: Llama4Config) -> ParamCounts:
    H, D, V = cfg.hidden_size, cfg.head_dim, cfg.vocab_size
    Hq, Hkv, I, E = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.intermediate_size, cfg.num_local_experts
    L = cfg.num_hidden_layers
    n_moe = len(cfg.moe_layers)
    attn_layer = H * Hq * D + 2 * H * Hkv * D + Hq * D * H
    expert = 3 * H * I
    return ParamCounts(embedding=V * H, lm_head=0 if cfg.tie_word_embeddings else V * H, attention=L * attn_layer,
                       experts=n_moe * E * expert, shared_expert=n_moe * expert,
                       dense_mlp=(L - n_moe) * 3 * H * cfg.intermediate_size_mlp, router=n_moe * H * E,
                       norms=L * 2 * H + H, moe_layers=n_moe, expert_params=expert)


def layer_kinds(cfg: Llama4Config) -> tuple[int, int]:
    """(global layers, chunked-local layers). NoPE layers attend over the whole context."""
    chunked = sum(1 for i in range(cfg.num_hidden_layers) if cfg.uses_rope(i)) if cfg.attention_chunk_size else 0
    return cfg.num_hidden_layers - chunked, chunked


def kv_bytes_per_token_layer(cfg: Llama4Config, kv: str) -> int:
    return 2 * cfg.num_key_value_heads * cfg.head_dim * KV_BYTES[kv]  # K and V


def kv_bytes_per_sequence(cfg: Llama4Config, kv: str, context: int) -> int:
    """One sequence of `context` tokens: global layers hold all of it, chunked layers one chunk at most."""
    g, c = layer_kinds(cfg)
    per = kv_bytes_per_token_layer(cfg, kv)
    local = min(context, cfg.attention_chunk_size) if cfg.attention_chunk_size else context
    return per * (g * context + c * local)


def max_context_for(cfg: Llama4Config, kv: str, budget_bytes: float) -> int:
    """Largest context whose KV fits in `budget_bytes` (inverse of kv_bytes_per_sequence)."""
    if budget_bytes <= 0:
        return 0
    g, c = layer_kinds(cfg)
    per = kv_bytes_per_token_layer(cfg, kv)
    chunk = cfg.attention_chunk_size
    small = int(budget_bytes // (per * (g + c)))  # while context <= chunk every layer grows
    if chunk is None or small <= chunk:
        return small
    return int((budget_bytes - per * c * chunk) // (per * g)) if g else 2**62


def attention_flops_per_token(cfg: Llama4Config, position: int) -> float:
    """QK^T and PV for one query at `position` (keys 0..position), all layers: 4 * Hq * D per key."""
    g, c = layer_kinds(cfg)
    keys = position + 1
    local = (position % cfg.attention_chunk_size) + 1 if cfg.attention_chunk_size else keys
    return 4.0 * cfg.num_attention_heads * cfg.head_dim * (g * keys + c * local)


def prefill_attention_flops(cfg: Llama4Config, n: int) -> float:
    """Sum of attention_flops_per_token over positions 0..n-1 (closed form)."""
    g, c = layer_kinds(cfg)
    per_key = 4.0 * cfg.num_attention_heads * cfg.head_dim
    full = n * (n + 1) / 2
    chunk = cfg.attention_chunk_size
    if chunk:
        q, r = divmod(n, chunk)
        local = q * chunk * (chunk + 1) / 2 + r * (r + 1) / 2
    else:
        local = full
    return per_key * (g * full + c * local)


def _checkpoint_dtype(folder: str):
    """The dtype the loader gives high-precision tensors on a GPU: config.json's torch_dtype (bf16 if unset)."""
    import torch

    with open(os.path.join(folder, "config.json")) as f:
        raw = json.load(f)
    name = raw.get("torch_dtype") or raw.get("text_config", {}).get("torch_dtype") or "bfloat16"
    return getattr(torch, name)


def checkpoint_report(folder: str, world_sizes: tuple[int, ...] = (1, 4, 8)) -> dict:
    """Bytes in the safetensors headers (all, and the text model's), and the parameter bytes the loader
    places on each GPU for each tensor-parallel size (the loader on the meta device, from the headers,
    with its own shard rules). An invalid size gets the reason instead."""
    from amd_llama4.model.loader import load_model
    from amd_llama4.model.safetensors_io import Checkpoint
    from amd_llama4.parallel.tp import Parallel, check_parallel

    ckpt = Checkpoint(folder)
    text = [i for n, i in ckpt.tensors.items() if not n.startswith(("vision_model.", "multi_modal_projector."))]
    dtype = _checkpoint_dtype(folder)
    cfg = load_config(folder)
    per_gpu: dict[int, int | str] = {}
    for w in world_sizes:
        try:
            check_parallel(cfg, Parallel(0, w))
        except ValueError as e:
            per_gpu[w] = str(e)
            continue
        # rank 0 stands for all: under tensor parallelism the rank changes offsets, never sizes
        per_gpu[w] = rank_bytes(load_model(folder, device="meta", dtype=dtype, progress=False,
                                           parallel=Parallel(0, w)))
    return {"folder": folder, "dtype": str(dtype).removeprefix("torch."),
            "header_bytes": sum(i.nbytes for i in ckpt.tensors.values()),
            "header_bytes_text": sum(i.nbytes for i in text), "bytes_per_gpu": per_gpu}


def rank_bytes(model) -> int:
    """Parameter bytes one rank's model holds (tied weights once)."""
    return sum(p.numel() * p.element_size() for p in model.parameters())


def plan(p: PlanInput) -> dict:
    cfg = load_config(p.model)
    spec = DEVICE_SPECS[p.gpu]
    pc = param_counts(cfg)
    N = p.num_gpus
    wb = WEIGHT_BYTES[p.weights]
    weights_total = pc.linear * wb + pc.high_precision * 2
    # Everything is sharded over the N GPUs (TP/EP, vocab-parallel embedding) except the norms.
    weights_per_gpu = (weights_total - pc.norms * 2) / N + pc.norms * 2
    kv_shards = min(N, cfg.num_key_value_heads)  # beyond 8 GPUs the KV heads are replicated
    kv_tok_layer = kv_bytes_per_token_layer(cfg, p.kv)
    kv_seq = kv_bytes_per_sequence(cfg, p.kv, p.context)
    kv_total = kv_seq * p.concurrency
    kv_per_gpu = kv_total / kv_shards

    # Workspace: activations of one step of max_batched_tokens tokens (bf16) + fp32 logits of the
    # sampled rows + runtime overhead. Attention is assumed flash-style (no [S, S] scores).
    T = p.max_batched_tokens
    H, D = cfg.hidden_size, cfg.head_dim
    i_max = max(cfg.intermediate_size, cfg.intermediate_size_mlp if pc.dense_mlp else 0)
    heads_q, heads_kv = cfg.num_attention_heads / N, cfg.num_key_value_heads / kv_shards
    per_tok = (4 * H + (2 * heads_q + 2 * heads_kv) * D + 3 * i_max / N
               + MOE_ACT_COPIES * H * cfg.num_experts_per_tok)
    workspace = T * per_tok * 2 + p.concurrency * cfg.vocab_size / N * 4 + p.runtime_overhead_gb * 1e9
    vision, vision_bytes = None, 0
    if cfg.vision_config is not None:  # the tower is loaded (replicated, bf16) whether or not images come
        vision = plan_vision(cfg, p.model, p.images_per_prompt, p.concurrency,
                             spec.bf16_tflops * 1e12, spec.hbm_tb_s * 1e12)
        vision_bytes = (vision["vision_weights_bytes_per_gpu"] + vision["encoder_workspace_bytes_per_gpu"]
                        + vision["encoder_cache_bytes_per_gpu"])
        if vision["image_tokens_per_prompt_max"] >= p.context:
            raise ValueError(f"plan: {p.images_per_prompt} images can take {vision['image_tokens_per_prompt_max']} "
                             f"tokens, not less than context {p.context}: raise --context or lower "
                             "--images-per-prompt")
    elif p.images_per_prompt:
        raise ValueError(f"plan: model {p.model!r} has no vision tower (text-only config); drop --images-per-prompt")

    capacity = spec.memory_gb * 1e9
    usable = capacity * p.gpu_memory_utilization
    need = weights_per_gpu + kv_per_gpu + workspace + vision_bytes
    kv_budget_per_gpu = usable - weights_per_gpu - workspace - vision_bytes
    kv_budget_total = max(kv_budget_per_gpu, 0) * kv_shards
    max_ctx_mem = max_context_for(cfg, p.kv, kv_budget_total / p.concurrency)
    max_conc = int(kv_budget_total // kv_seq) if kv_seq else 0

    # -- roofline ----------------------------------------------------------------------------------
    peak = (spec.fp8_tflops if p.weights == "fp8" else spec.bf16_tflops) * 1e12 * N
    bw = spec.hbm_tb_s * 1e12 * N
    k, E = cfg.num_experts_per_tok, cfg.num_local_experts
    active_params = (pc.attention + pc.shared_expert + pc.dense_mlp + pc.router + pc.lm_head
                     + pc.moe_layers * k * pc.expert_params)
    non_expert_bytes = weights_total - pc.experts * wb - pc.embedding * 2  # embedding: one row per token
    C = p.concurrency
    experts_touched = E * (1 - (1 - k / E) ** C)  # expected distinct experts per MoE layer for C tokens
    decode_bytes = non_expert_bytes + pc.moe_layers * experts_touched * pc.expert_params * wb + kv_total
    decode_flops = C * (2 * active_params + attention_flops_per_token(cfg, p.context - 1))
    t_decode = max(decode_bytes / bw, decode_flops / peak)
    decode_bound = "memory" if decode_bytes / bw >= decode_flops / peak else "compute"

    def prefill(n: int) -> tuple[float, str]:
        touched = E * (1 - (1 - k / E) ** n)
        nbytes = non_expert_bytes + pc.moe_layers * touched * pc.expert_params * wb + kv_bytes_per_sequence(cfg, p.kv, n)
        flops = 2 * active_params * n + prefill_attention_flops(cfg, n)
        t = max(nbytes / bw, flops / peak)
        return t, ("memory" if nbytes / bw >= flops / peak else "compute")

    t_prefill, prefill_bound = prefill(p.context)
    n8k = min(8192, p.context)
    t_prefill_8k, _ = prefill(n8k)
    total_decode = C / t_decode
    ckpt = None if is_preset(p.model) else checkpoint_report(p.model)
    return {
        "checkpoint": ckpt,
        "vision": vision,
        "input": asdict(p),
        "gpu_spec": asdict(spec),
        "params_total": pc.total,
        "params_active_per_token": active_params,
        "params_by_group": {k2: v for k2, v in asdict(pc).items() if k2 != "extra"},
        "weights_bytes_total": weights_total,
        "weights_bytes_per_gpu": weights_per_gpu,
        "global_layers": layer_kinds(cfg)[0],
        "chunked_layers": layer_kinds(cfg)[1],
        "attention_chunk_size": cfg.attention_chunk_size,
        "kv_bytes_per_token": kv_tok_layer * cfg.num_hidden_layers,
        "kv_bytes_per_token_per_layer": kv_tok_layer,
        "kv_bytes_per_token_global_layers": kv_tok_layer * layer_kinds(cfg)[0],
        "kv_bytes_per_sequence": kv_seq,
        "kv_bytes_total": kv_total,
        "kv_bytes_per_gpu": kv_per_gpu,
        "kv_shards": kv_shards,
        "workspace_bytes_per_gpu": workspace,
        "vision_bytes_per_gpu": vision_bytes,
        "memory_bytes_per_gpu": need,
        "gpu_memory_bytes": capacity,
        "usable_bytes_per_gpu": usable,
        "fits": need <= usable,
        "headroom_bytes_per_gpu": usable - need,
        "max_context": min(max_ctx_mem, cfg.max_position_embeddings),
        "max_context_memory": max_ctx_mem,
        "max_position_embeddings": cfg.max_position_embeddings,
        "max_concurrency": max_conc,
        "decode_step_s": t_decode,
        "decode_bound": decode_bound,
        "decode_tokens_per_s": 1.0 / t_decode,
        "decode_tokens_per_s_total": total_decode,
        "decode_tokens_per_s_per_node": total_decode * GPUS_PER_NODE / N,
        "prefill_s": t_prefill,
        "prefill_bound": prefill_bound,
        "prefill_tokens_per_s": p.context / t_prefill,
        "prefill_tokens_per_s_8k": n8k / t_prefill_8k,
        "assumptions": {
            "units": "bytes; GB = 1e9 bytes",
            "quantised": "fp8/int4 apply to attention, expert, shared-expert and dense MLP weights; "
                         "embedding, lm_head, router and norms stay bf16; fp8 per-channel scales ignored (<0.1%)",
            "sharding": "weights split over all GPUs (TP/EP); KV heads split over min(N, 8) GPUs",
            "kv": "global (NoPE) layers keep the whole context; chunked layers at most one chunk per sequence",
            "vision": "tower replicated on every GPU in bf16 (weights + one layer's activations over a prompt's "
                      "tiles + the prompt's projected features); image tokens are part of `context`",
            "workspace": f"{T} batched tokens of bf16 activations + fp32 logits + {p.runtime_overhead_gb} GB runtime",
            "roofline": "upper bound: max(bytes/HBM, FLOPs/peak) over all N GPUs; no communication, 100% efficiency",
            "per_node": f"{GPUS_PER_NODE} GPUs per node; fewer GPUs per deployment = replicas filling the node",
            "decode": "every user at `context` tokens; one token per user per step",
            "prefill": "one prompt of `context` tokens (and of 8192 tokens for prefill_tokens_per_s_8k)",
        },
    }


def _gb(v: float) -> str:
    return f"{v / 1e9:,.1f} GB"


def format_plan(r: dict) -> str:
    i = r["input"]
    lines = [
        f"{i['model']} on {i['num_gpus']} x {i['gpu']} | weights {i['weights']} | KV {i['kv']} | "
        f"context {i['context']:,} | concurrency {i['concurrency']}",
        f"  parameters          {r['params_total'] / 1e9:,.1f} B total, {r['params_active_per_token'] / 1e9:,.1f} B "
        "active per token",
        f"  weights             {_gb(r['weights_bytes_total'])} total, {_gb(r['weights_bytes_per_gpu'])} per GPU",
        f"  KV per token        {r['kv_bytes_per_token']:,} B all layers; {r['kv_bytes_per_token_global_layers']:,} B "
        f"in the {r['global_layers']} global layers ({r['chunked_layers']} chunked layers capped at "
        f"{r['attention_chunk_size']} tokens)",
        f"  KV                  {_gb(r['kv_bytes_per_sequence'])} per sequence, {_gb(r['kv_bytes_total'])} total, "
        f"{_gb(r['kv_bytes_per_gpu'])} per GPU",
        f"  workspace           {_gb(r['workspace_bytes_per_gpu'])} per GPU",
        f"  memory per GPU      {_gb(r['memory_bytes_per_gpu'])} of {_gb(r['usable_bytes_per_gpu'])} usable "
        f"({i['gpu_memory_utilization']:.0%} of {_gb(r['gpu_memory_bytes'])}) -> "
        + ("FITS" if r["fits"] else "DOES NOT FIT"),
        f"  max context         {r['max_context']:,} tokens at concurrency {i['concurrency']}"
        + (f" (memory allows {r['max_context_memory']:,})" if r["max_context_memory"] > r["max_context"] else ""),
        f"  max concurrency     {r['max_concurrency']:,} sequences at context {i['context']:,}",
        f"  decode (roofline)   {r['decode_tokens_per_s']:,.1f} tok/s per user, {r['decode_tokens_per_s_total']:,.0f} "
        f"tok/s for these {i['num_gpus']} GPUs, {r['decode_tokens_per_s_per_node']:,.0f} tok/s per 8-GPU node "
        f"({r['decode_bound']}-bound)",
        f"  prefill (roofline)  {r['prefill_tokens_per_s']:,.0f} tok/s for a {i['context']:,}-token prompt "
        f"({r['prefill_s']:,.2f} s, {r['prefill_bound']}-bound); {r['prefill_tokens_per_s_8k']:,.0f} tok/s at 8K",
    ]
    if r.get("vision"):
        lines += format_vision(r["vision"])
    c = r.get("checkpoint")
    if c:
        lines.append(f"  checkpoint headers  {_gb(c['header_bytes'])} ({_gb(c['header_bytes_text'])} text); loaded "
                     f"in {c['dtype']} per GPU: " + ", ".join(
                         f"tp {w}: {_gb(b) if isinstance(b, int) else b}" for w, b in c["bytes_per_gpu"].items()))
    return "\n".join(lines)
