"""ModelRunner: turns one scheduled step into padded tensors, runs the model over the paged cache,
returns the logits of each sequence's last new token."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from amd_llama4.engine.kv_cache import KVCache, SeqBlocks


@dataclass
class StepItem:
    """Compute `tokens` of one sequence at positions start .. start+len-1."""

    blocks: SeqBlocks
    tokens: list[int]
    start: int


class StepCache:
    """The model's view of the paged cache for one step (implements model.llama4.KVCache)."""

    def __init__(self, cache: KVCache, write_idx: torch.Tensor, write_slots: dict, read_slots: dict,
                 read_pos: dict):
        self.cache = cache
        # [N] indices of real (non-padding) tokens in the flat [B*S] batch; None: all are (decode)
        self.write_idx = write_idx
        self.write_slots, self.read_slots, self.read_pos = write_slots, read_slots, read_pos

    def update(self, layer, k, v, positions):
        # k, v: [B, S, Hkv, D] -> every visible key of this layer kind: [B, L, Hkv, D], k_pos [B, L]
        kind = self.cache.kind_of_layer[layer]
        B, S = k.shape[:2]
        flat_k, flat_v = k.reshape(B * S, *k.shape[2:]), v.reshape(B * S, *v.shape[2:])
        if self.write_idx is not None:
            flat_k, flat_v = flat_k.index_select(0, self.write_idx), flat_v.index_select(0, self.write_idx)
        self.cache.write(layer, flat_k, flat_v, self.write_slots[kind])
        k_all, v_all = self.cache.read(layer, self.read_slots[kind])
        return k_all, v_all, self.read_pos[kind]


class ModelRunner:
    def __init__(self, model, cache: KVCache, device: torch.device | str):
        self.model, self.cache, self.device = model, cache, torch.device(device)

    def _tensors(self, items: list[StepItem]):
        B, S = len(items), max(len(it.tokens) for it in items)
        ids = torch.zeros(B, S, dtype=torch.long)
        pos = torch.full((B, S), -1, dtype=torch.long)
        write_idx = []
        for b, it in enumerate(items):
            n = len(it.tokens)
            ids[b, :n] = torch.tensor(it.tokens)
            pos[b, :n] = torch.arange(it.start, it.start + n)
            write_idx.extend(range(b * S, b * S + n))
        write_slots, read_slots, read_pos = {}, {}, {}
        seqs, ends = [it.blocks for it in items], [it.start + len(it.tokens) for it in items]
        for kind in self.cache.kinds:
            ws = []
            for it in items:
                ws += self.cache.slots(it.blocks, kind, range(it.start, it.start + len(it.tokens)))
            rs, rp = self.cache.read_maps(seqs, kind, ends)
            write_slots[kind] = torch.tensor(ws, dtype=torch.long, device=self.device)
            read_slots[kind], read_pos[kind] = rs.to(self.device), rp.to(self.device)
        write_idx = None if len(write_idx) == B * S else torch.tensor(write_idx, device=self.device)
        step = StepCache(self.cache, write_idx, write_slots, read_slots, read_pos)
        return ids.to(self.device), pos.to(self.device), step

    @torch.no_grad()
    def execute(self, items: list[StepItem]) -> torch.Tensor:
        """-> fp32 logits [B, V] for the last new token of each item."""
        ids, pos, step = self._tensors(items)
        hidden = self.model.hidden_states(ids, pos, step)  # [B, S, H]
        last = torch.tensor([len(it.tokens) - 1 for it in items], device=self.device)
        return self.model.compute_logits(hidden[torch.arange(len(items), device=self.device), last])
