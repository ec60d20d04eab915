"""The decode step with static shapes: one new token per sequence, attention straight from the paged
cache through per-kind block tables of a fixed width, so a HIP/CUDA graph can capture it.

A batch of n sequences may be padded to B rows (a graph's batch-size bucket): padding rows repeat
row 0 (token, position, tables), so they compute finite values, and write row 0's K/V to row 0's
slot, the same bytes as row 0 itself: duplicate slots in one index_copy_ then never race."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from amd_llama4 import ops
from amd_llama4.engine.block_manager import SeqBlocks
from amd_llama4.engine.kv_cache import KVCache


@dataclass
class DecodeInputs:
    """Everything a decode step reads; the static buffers of a captured graph have this form."""

    ids: torch.Tensor  # [B, 1] long
    positions: torch.Tensor  # [B, 1] long
    q_pos: torch.Tensor  # [B] int32, the new token's position
    src: torch.Tensor  # [B] long, the row whose K/V a row writes (itself; padding: 0)
    tables: dict[str, torch.Tensor]  # kind -> [B, max_blocks] int32
    seq_lens: dict[str, torch.Tensor]  # kind -> [B] int32, keys in the table (new token included)
    first_pos: dict[str, torch.Tensor]  # kind -> [B] int32, position of the table's slot 0
    slots: dict[str, torch.Tensor]  # kind -> [B] long, where the new token's K/V goes

    @property
    def batch(self) -> int:
        return self.ids.shape[0]

    def _fields(self):
        yield from (self.ids, self.positions, self.q_pos, self.src)
        for d in (self.tables, self.seq_lens, self.first_pos, self.slots):
            yield from (d[k] for k in sorted(d))

    def rows(self, n: int) -> "DecodeInputs":
        """Views of the first n rows (same storage)."""
        cut = lambda d: {k: t[:n] for k, t in d.items()}  # noqa: E731
        return DecodeInputs(self.ids[:n], self.positions[:n], self.q_pos[:n], self.src[:n], cut(self.tables),
                            cut(self.seq_lens), cut(self.first_pos), cut(self.slots))

    def copy_(self, other: "DecodeInputs") -> "DecodeInputs":
        """In-place copy of `other` (same shapes) into these tensors; returns self."""
        for dst, s in zip(self._fields(), other._fields(), strict=True):
            if dst.shape != s.shape:
                raise ValueError(f"DecodeInputs.copy_: shape {tuple(s.shape)} into {tuple(dst.shape)}")
            dst.copy_(s, non_blocking=True)
        return self

    def to(self, device: torch.device) -> "DecodeInputs":
        # non_blocking: a host-to-device copy that never waits for the GPU (a blocking one is a sync)
        mv = lambda t: t.to(device, non_blocking=True)  # noqa: E731
        md = lambda d: {k: mv(t) for k, t in d.items()}  # noqa: E731
        return DecodeInputs(mv(self.ids), mv(self.positions), mv(self.q_pos), mv(self.src), md(self.tables),
                            md(self.seq_lens), md(self.first_pos), md(self.slots))

    @staticmethod
    def empty(kinds, batch: int, widths: dict[str, int], device: torch.device) -> "DecodeInputs":
        """Zero buffers (block 0, position 0: valid indices, whatever is replayed before a copy)."""
        z = lambda *shape, dtype=torch.int32: torch.zeros(shape, dtype=dtype, device=device)  # noqa: E731
        return DecodeInputs(z(batch, 1, dtype=torch.long), z(batch, 1, dtype=torch.long), z(batch),
                            z(batch, dtype=torch.long), {k: z(batch, widths[k]) for k in kinds},
                            {k: z(batch) for k in kinds}, {k: z(batch) for k in kinds},
                            {k: z(batch, dtype=torch.long) for k in kinds})


def build_decode_inputs(cache: KVCache, seqs: list[SeqBlocks], tokens: list[int], starts: list[int], batch: int,
                        widths: dict[str, int] | None = None) -> DecodeInputs:
    """Host tensors for one decode step of len(seqs) sequences padded to `batch` rows. widths: the
    static table width per kind (graphs); None: the widest table of this step."""
    n = len(seqs)
    if not 0 < n <= batch:
        raise ValueError(f"decode step of {n} sequences cannot fill {batch} rows")
    pad = list(range(n)) + [0] * (batch - n)  # source item of every row
    ids = torch.tensor([tokens[i] for i in pad], dtype=torch.long)[:, None]
    q_pos = torch.tensor([starts[i] for i in pad], dtype=torch.int32)
    tables, lens, first, slots = {}, {}, {}, {}
    for kind in cache.kinds:
        rows = [seqs[i].tables[kind] for i in range(n)]
        width = widths[kind] if widths is not None else max(1, max(len(r) for r in rows))
        longest = max(len(r) for r in rows)
        if longest > width:
            raise ValueError(f"decode step: a sequence holds {longest} {kind} KV blocks, more than the "
                             f"{width} a captured step's block table has; raise max_model_len or use enforce_eager")
        tab = torch.zeros(n, width, dtype=torch.int32)
        for b, r in enumerate(rows):
            tab[b, :len(r)] = torch.tensor(r, dtype=torch.int32)
        base = [seqs[i].chunk_start if kind == "chunked" else 0 for i in range(n)]
        tables[kind] = tab[pad]
        first[kind] = torch.tensor([base[i] for i in pad], dtype=torch.int32)
        lens[kind] = torch.tensor([starts[i] + 1 - base[i] for i in pad], dtype=torch.int32)
        slots[kind] = torch.tensor([cache.slots(seqs[i], kind, range(starts[i], starts[i] + 1))[0] for i in pad],
                                   dtype=torch.long)
    return DecodeInputs(ids, q_pos.long()[:, None], q_pos, torch.tensor(pad, dtype=torch.long), tables, lens,
                        first, slots)


def paged_decode_supported(cache: KVCache) -> bool:
    """Per-token fp8 scales (fp8 KV without checkpoint scales) are not in the paged op's contract
    (per tensor / per head only): those caches keep the eager gather path."""
    return not cache.fp8 or all(cache.static)


class PagedDecodeCache:
    """The model's view of the cache for a static decode step (implements model.llama4.KVCache)."""

    def __init__(self, cache: KVCache, inputs: DecodeInputs):
        self.cache, self.inputs = cache, inputs

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor,
               scale: float, chunk_size: int | None) -> torch.Tensor:
        # q: [B, 1, Hq, D]; k, v: [B, 1, Hkv, D] -> [B, 1, Hq, D]
        c, x = self.cache, self.inputs
        kind, li = c.kind_of_layer[layer], c.index_in_kind[layer]
        c.write(layer, k[:, 0].index_select(0, x.src), v[:, 0].index_select(0, x.src), x.slots[kind])
        paged = lambda t: t[li].view(-1, c.block_size, *t.shape[2:])  # noqa: E731  [blocks, block, Hkv, D]
        k_scale = v_scale = None
        if c.fp8:  # static scales only (paged_decode_supported): [Hkv] each
            k_scale, v_scale = c.scales[layer, 0], c.scales[layer, 1]
        out = ops.paged_attention_decode(q[:, 0], paged(c.k[kind]), paged(c.v[kind]), x.tables[kind],
                                         x.seq_lens[kind], x.first_pos[kind], x.q_pos, scale, chunk_size,
                                         k_scale, v_scale)
        return out[:, None]
