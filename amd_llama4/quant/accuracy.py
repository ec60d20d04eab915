"""Accuracy of a quantised configuration against a reference: teacher-forced next-token logits,
top-1 agreement and mean KL(ref || test) over every position."""
from __future__ import annotations

import torch

from amd_llama4.engine.kv_cache import KVCache, SeqBlocks
from amd_llama4.engine.runner import ModelRunner, StepItem


@torch.no_grad()
def teacher_forced_logits(model, ids: list[int], kv_cache_dtype: str = "auto", fmt: str = "e4m3fn",
                          block_size: int = 16) -> torch.Tensor:
    """Logits [len(ids), V] at every position, each token computed in its own decode step, so every
    key it attends to is read back from a (possibly fp8) paged cache."""
    cfg = model.config
    blocks = -(-len(ids) // block_size) + -(-(cfg.attention_chunk_size or 1) // block_size) + 2
    cache = KVCache(cfg, blocks, block_size, next(model.parameters()).dtype if not hasattr(model, "quant_config")
                    else model.model.embed_tokens.weight.dtype, "cpu", kv_cache_dtype, fmt,
                    getattr(model, "kv_scales", None))
    runner, seq, rows = ModelRunner(model, cache, "cpu"), SeqBlocks(), []
    for pos, tok in enumerate(ids):
        cache.reserve(seq, pos, pos + 1)
        rows.append(runner.execute([StepItem(seq, [tok], pos)])[0])
    return torch.stack(rows)


def agreement_and_kl(ref_logits: torch.Tensor, test_logits: torch.Tensor) -> tuple[float, float]:
    ref, test = ref_logits.float().log_softmax(-1), test_logits.float().log_softmax(-1)
    agree = (ref.argmax(-1) == test.argmax(-1)).float().mean().item()
    kl = (ref.exp() * (ref - test)).sum(-1).mean().item()
    return agree, kl
