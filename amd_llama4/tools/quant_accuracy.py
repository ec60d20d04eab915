"""Accuracy of a quantised configuration against a reference: teacher-forced next-token logits,
top-1 agreement and mean KL(ref || test) over every position."""
from __future__ import annotations

import torch

from amd_llama4.engine.block_manager import SeqBlocks
from amd_llama4.engine.kv_cache import KVCache
from amd_llama4.engine.runner import ModelRunner, StepItem


def _act_dtype(model) -> torch.dtype:
    # FP8 models hold float8 parameters too; the embedding keeps the activation dtype.
    return model.model.embed_tokens.weight.dtype


@torch.no_grad()
def teacher_forced_logits(model, ids: list[int], kv_cache_dtype: str = "auto", fmt: str = "e4m3fn",
                          block_size: int = 16, tokens_per_step: int = 1) -> torch.Tensor:
    """Logits [len(ids), V] at every position, computed through the paged cache in steps of
    `tokens_per_step` tokens (1 = one decode step per token; a step never spans two attention chunks).
    Every key attention reads, including those of the current step, is read back from the (possibly fp8)
    cache. fp8 KV scales are the checkpoint's static ones or computed per token and KV head as it is
    written, so the step size changes nothing stored."""
    cfg = model.config
    blocks = -(-len(ids) // block_size) + -(-(cfg.attention_chunk_size or 1) // block_size) + 2
    cache = KVCache(cfg, blocks, block_size, _act_dtype(model), "cpu", kv_cache_dtype, fmt,
                    getattr(model, "kv_scales", None))
    runner, seq, rows = ModelRunner(model, cache, "cpu"), SeqBlocks(), []
    chunk = cfg.attention_chunk_size or len(ids) + 1
    pos = 0
    while pos < len(ids):
        end = min(pos + tokens_per_step, len(ids), (pos // chunk + 1) * chunk)  # a step stays in one chunk
        cache.reserve(seq, pos, end)
        rows.append(model.compute_logits(runner.hidden_states([StepItem(seq, ids[pos:end], pos)])))
        pos = end
    return torch.cat(rows)


def agreement_and_kl(ref_logits: torch.Tensor, test_logits: torch.Tensor) -> tuple[float, float]:
    """(fraction of positions with the same argmax, mean KL(softmax(ref) || softmax(test)) in nats)."""
    ref, test = ref_logits.float().log_softmax(-1), test_logits.float().log_softmax(-1)
    agree = (ref.argmax(-1) == test.argmax(-1)).float().mean().item()
    kl = (ref.exp() * (ref - test)).sum(-1).mean().item()
    return agree, kl


def top1_margin(logits: torch.Tensor) -> torch.Tensor:
    """Per position (top1 - top2 logit) / logit std: how close to a tie the reference is."""
    top = logits.float().topk(2, dim=-1).values
    return (top[:, 0] - top[:, 1]) / logits.float().std(-1)
