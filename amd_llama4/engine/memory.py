"""How much KV cache this process gets, and how it splits into the two block pools (vLLM's model).

GPU: profile one forward at max_num_batched_tokens, then the cache gets
    gpu_memory_utilization x total - (peak torch allocation + memory torch does not own).
CPU: CPU_KV_FRACTION of the available RAM, capped at what max_num_seqs full-length sequences need.
`kv_cache_memory_bytes` overrides both. The chunked pool gets at most
max_num_seqs x (ceil(chunk / block) + 1) blocks (a chunked layer never holds more than one chunk
per sequence); the global pool gets the rest.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

import torch

from amd_llama4.config import Llama4Config
from amd_llama4.engine.block_manager import KINDS, layer_kinds

log = logging.getLogger("amd_llama4")

# the CPU default KV budget, a fraction of MemAvailable (weights, activations and other processes
# keep the rest); kv_cache_memory_bytes overrides it
CPU_KV_FRACTION = 0.3
DEFAULT_MAX_NUM_BATCHED_TOKENS = 2048


def batched_tokens(args) -> int:
    """The scheduler's token budget per step (EngineArgs.max_num_batched_tokens or the default)."""
    return args.max_num_batched_tokens or max(DEFAULT_MAX_NUM_BATCHED_TOKENS, args.block_size, args.max_num_seqs)


def model_len(args, cfg: Llama4Config) -> int:
    """EngineArgs.max_model_len, bounded by the model's max_position_embeddings."""
    return min(args.max_model_len or cfg.max_position_embeddings, cfg.max_position_embeddings)


@dataclass
class KVPoolPlan:
    blocks: dict[str, int]  # per pool: {"global": n, "chunked": m}
    block_bytes: dict[str, int]  # one block of each pool, over all layers of that kind
    block_size: int
    max_concurrent_tokens: int  # tokens all running sequences together can hold
    max_concurrency: float  # sequences of max_model_len tokens that fit at once
    max_model_len: int
    bytes: int = field(init=False)

    def __post_init__(self) -> None:
        self.bytes = sum(self.blocks[k] * self.block_bytes[k] for k in self.blocks)

    def log(self, budget_bytes: int) -> None:
        pools = ", ".join(f"{k} {n:,} blocks ({_gib(n * self.block_bytes[k])})" for k, n in self.blocks.items())
        log.info("KV cache: %s of a %s budget; max concurrent tokens %s, max concurrency %.2fx "
                 "for %s-token requests", pools, _gib(budget_bytes), f"{self.max_concurrent_tokens:,}",
                 self.max_concurrency, f"{self.max_model_len:,}")


def kv_block_bytes(cfg: Llama4Config, block_size: int, dtype: torch.dtype, kv_cache_dtype: str,
                   num_kv_heads: int) -> dict[str, int]:
    """Bytes of one block of each pool over all layers of that kind: K and V, plus with an fp8 KV
    cache the fp32 per-token scales (K|V per KV head) that KVCache allocates for every layer."""
    kinds = layer_kinds(cfg)
    elem = 1 if kv_cache_dtype == "fp8" else torch.empty((), dtype=dtype).element_size()
    per_layer = block_size * num_kv_heads * (2 * cfg.head_dim * elem + (2 * 4 if kv_cache_dtype == "fp8" else 0))
    return {k: kinds.count(k) * per_layer for k in KINDS if k in kinds}


def seq_blocks_needed(cfg: Llama4Config, block_size: int, max_model_len: int, kinds) -> dict[str, int]:
    """Blocks of each pool (of `kinds`) that one max_model_len sequence can hold at once."""
    seq_blocks = -(-max_model_len // block_size)
    # a chunked layer holds one chunk per sequence: ceil(chunk / block) blocks, +1 of slack
    chunk_blocks = min(-(-(cfg.attention_chunk_size or max_model_len) // block_size) + 1, seq_blocks)
    return {k: seq_blocks if k == "global" else chunk_blocks for k in kinds}


def plan_kv_pools(cfg: Llama4Config, budget_bytes: int, block_bytes: dict[str, int], block_size: int,
                  max_num_seqs: int, max_model_len: int) -> KVPoolPlan:
    """Split `budget_bytes` into the pools. Raises ValueError when one max_model_len sequence cannot fit."""
    need = seq_blocks_needed(cfg, block_size, max_model_len, block_bytes)
    seq_blocks, chunk_blocks = -(-max_model_len // block_size), need.get("chunked", 0)
    one_seq = sum(need[k] * block_bytes[k] for k in need)
    if budget_bytes < one_seq:
        _too_small(budget_bytes, block_bytes, need, max_model_len, block_size)
    bg, bc = block_bytes.get("global", 0), block_bytes.get("chunked", 0)
    if bg and bc:
        # chunked: one chunk for each of max_num_seqs sequences, never more than the global pool can
        # match (every chunked block has at least one global block beside it), never so many that
        # one full-length sequence no longer fits in the global pool
        chunked = max(chunk_blocks, min(max_num_seqs * chunk_blocks, budget_bytes // (bg + bc),
                                        (budget_bytes - seq_blocks * bg) // bc))
        blocks = {"global": (budget_bytes - chunked * bc) // bg, "chunked": chunked}
        tokens = blocks["global"] * block_size
        concurrency = min(blocks["global"] / seq_blocks, blocks["chunked"] / chunk_blocks)
    else:  # one pool only (no chunked layers, or no global ones)
        kind, bb = next(iter(block_bytes.items()))
        blocks = {kind: budget_bytes // bb}
        per_seq = need[kind]
        concurrency = blocks[kind] / per_seq
        tokens = blocks[kind] * block_size if kind == "global" else int(concurrency * max_model_len)
    return KVPoolPlan(blocks, dict(block_bytes), block_size, tokens, concurrency, max_model_len)


def _too_small(budget, block_bytes, need, max_model_len, block_size) -> None:
    """vLLM-style start-up error: what one sequence needs, what is there, what to change."""
    one_seq = sum(need[k] * block_bytes[k] for k in need)
    fixed = need.get("chunked", 0) * block_bytes.get("chunked", 0) if "global" in block_bytes else 0
    bg = block_bytes.get("global", 0)
    fits = (budget - fixed) // bg * block_size if bg and budget > fixed else 0  # whole global blocks
    raise ValueError(
        f"max_model_len {max_model_len:,} needs {_gib(one_seq)} of KV cache for one sequence "
        f"({', '.join(f'{k}: {n} blocks' for k, n in need.items())}), but only {_gib(budget)} is "
        f"available (the estimated maximum model length is {fits:,}). Lower max_model_len (--max-model-len), "
        "raise gpu_memory_utilization or kv_cache_memory_bytes, use kv_cache_dtype='fp8', or spread the "
        "model over more GPUs (tensor_parallel_size).")


def _gib(n: float) -> str:
    return f"{n / 2**30:.3f} GiB" if n >= 2**30 else f"{n / 2**20:.3f} MiB"


def measure_kv_budget(model, args, device: torch.device) -> int:
    """Bytes this process may give its KV cache (see the module docstring)."""
    if args.kv_cache_memory_bytes is not None:  # EngineArgs checked it is positive
        return int(args.kv_cache_memory_bytes)
    device = torch.device(device)
    if device.type == "cuda":
        return _gpu_budget(model, args, device)
    if device.type != "cpu":
        raise ValueError(f"device {device}: no memory to size a KV cache from; pass kv_cache_memory_bytes")
    return _cpu_budget(model.config, args)


def _cpu_budget(cfg: Llama4Config, args) -> int:
    # more than max_num_seqs full-length sequences can never be used: don't take (and zero) the RAM
    heads = cfg.num_key_value_heads  # the CPU default serves tp=1; a tp rank would hold fewer
    from amd_llama4.platform import resolve_dtype

    bb = kv_block_bytes(cfg, args.block_size, resolve_dtype(args.dtype, "cpu", cfg), args.kv_cache_dtype, heads)
    need = seq_blocks_needed(cfg, args.block_size, model_len(args, cfg), bb)
    full = args.max_num_seqs * sum(need[k] * bb[k] for k in bb)
    return int(min(CPU_KV_FRACTION * available_ram(), full))


def available_ram() -> int:
    """MemAvailable (psutil when installed, else /proc/meminfo), bytes."""
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        pass
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def _gpu_budget(model, args, device: torch.device) -> int:
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    _profile_forward(model, batched_tokens(args), min(args.max_num_seqs, batched_tokens(args)), device)
    torch.cuda.synchronize(device)
    free, total = torch.cuda.mem_get_info(device)
    peak = torch.cuda.max_memory_allocated(device)  # weights + the profiled forward's activations
    # HIP/CUDA context, communicator buffers, other processes: in use but not in torch's pool
    not_torch = max(0, (total - free) - torch.cuda.memory_reserved(device))
    budget = int(args.gpu_memory_utilization * total - peak - not_torch)
    log.info("KV budget on %s: %.2f GiB = %.2f x %.2f GiB - %.2f GiB peak torch - %.2f GiB outside torch",
             device, budget / 2**30, args.gpu_memory_utilization, total / 2**30, peak / 2**30, not_torch / 2**30)
    if budget <= 0:
        raise ValueError(
            f"no memory left for the KV cache on {device}: {args.gpu_memory_utilization} x {total / 2**30:.2f} GiB "
            f"is used up by the weights and activations ({peak / 2**30:.2f} GiB peak) and memory outside torch "
            f"({not_torch / 2**30:.2f} GiB). Raise gpu_memory_utilization, lower max_num_batched_tokens "
            "(profiled forward), quantise the weights (quantization='fp8') or use more GPUs (tensor_parallel_size).")
    return budget


@torch.no_grad()
def _profile_forward(model, num_tokens: int, num_logits: int, device: torch.device) -> None:
    """One prefill of num_tokens without a KV cache, then logits for num_logits rows (the sampler's
    input at max_num_seqs): the activation peak a step can reach."""
    ids = torch.zeros(1, num_tokens, dtype=torch.long, device=device)  # ids: [1, T]
    hidden = model.hidden_states(ids)  # [1, T, H]
    model.compute_logits(hidden[0, -num_logits:])
    del hidden
    torch.cuda.empty_cache()
