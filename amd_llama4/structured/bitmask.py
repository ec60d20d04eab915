"""Token bitmasks for a batch: filled on the host by each row's GrammarMatcher, applied on the logits'
device by one vectorised op (no host sync).

Layout (llguidance's and xgrammar's): int32 [B, ceil(V / 32)], bit j of word w allows id 32*w + j.
Rows without a grammar are all ones. On a GPU the host buffer is pinned and copied non_blocking; a
fresh buffer per step comes from torch's caching host allocator, which keeps it until that copy has
run, so no step waits for the previous one.
"""
from __future__ import annotations

import torch

from amd_llama4.structured.backend import bitmask_words, fill_bitmask_rows

_SHIFTS: dict[torch.device, torch.Tensor] = {}


def fill_bitmask(matchers: list, vocab: int, device: torch.device) -> torch.Tensor | None:
    """matchers: per batch row a GrammarMatcher or None (free row); vocab: the logits' width.
    -> int32 [B, ceil(vocab/32)] on `device` (None when no row is constrained)."""
    if all(m is None for m in matchers):
        return None
    pin = device.type == "cuda"  # ROCm's torch reports its GPUs as "cuda" too
    buf = torch.empty((len(matchers), bitmask_words(vocab)), dtype=torch.int32, pin_memory=pin)
    host = buf.numpy()
    host.fill(-1)
    fill_bitmask_rows([(i, m) for i, m in enumerate(matchers) if m is not None], host)
    return buf.to(device, non_blocking=True) if device.type != "cpu" else buf


def apply_token_bitmask_(logits: torch.Tensor, bitmask: torch.Tensor) -> torch.Tensor:
    """logits: float [B, V] (in place); bitmask: int32 [B, W], W*32 >= V, on the logits' device.
    Disallowed ids get -inf. Unpack int32 words -> bool [B, V] -> one masked_fill_."""
    if logits.dim() != 2 or bitmask.dim() != 2 or bitmask.shape[0] != logits.shape[0]:
        raise ValueError(f"apply_token_bitmask_: logits [B, V] and bitmask [B, W] expected, got "
                         f"{tuple(logits.shape)} and {tuple(bitmask.shape)}")
    B, V = logits.shape
    if bitmask.dtype != torch.int32 or bitmask.shape[1] * 32 < V:
        raise ValueError(f"apply_token_bitmask_: bitmask must be int32 [B, >= {bitmask_words(V)}], got "
                         f"{bitmask.dtype} {tuple(bitmask.shape)}")
    if bitmask.device != logits.device:
        raise ValueError(f"apply_token_bitmask_: bitmask on {bitmask.device}, logits on {logits.device}")
    shifts = _SHIFTS.get(logits.device)
    if shifts is None:
        shifts = _SHIFTS[logits.device] = torch.arange(32, dtype=torch.int32, device=logits.device)
    # arithmetic shift of a negative word repeats the sign bit; & 1 keeps only bit j
    allowed = ((bitmask.unsqueeze(-1) >> shifts) & 1).view(B, -1)[:, :V]  # [B, V] 0/1
    return logits.masked_fill_(allowed == 0, float("-inf"))
