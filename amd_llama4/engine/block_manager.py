"""KV block bookkeeping: which blocks of which pool each sequence holds (no tensors).

Two kinds of layers, two block pools:
  global  (NoPE, full causal): a sequence keeps every block, its table grows with the context;
  chunked (RoPE, chunk-local): a sequence keeps only the blocks of its current attention chunk.
Slots of a chunked table are relative to the chunk start, so a chunk needs ceil(chunk / block)
blocks; the scheduler never lets one step span two chunks, so old-chunk blocks are released
before the first token of a new chunk is computed (its queries cannot see the old chunk).
The tensors live in kv_cache.KVCache, a BlockManager with storage.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from amd_llama4.config import Llama4Config

KINDS = ("global", "chunked")


def layer_kinds(cfg: Llama4Config) -> list[str]:
    """The pool each layer's K/V lives in: 'chunked' for chunk-local RoPE layers, else 'global'."""
    return ["chunked" if (cfg.uses_rope(i) and cfg.attention_chunk_size) else "global"
            for i in range(cfg.num_hidden_layers)]


class BlockAllocator:
    """A free list of block ids; LIFO reuse keeps recently freed blocks warm."""

    def __init__(self, num_blocks: int):
        self.num_blocks = num_blocks
        self._free = list(range(num_blocks - 1, -1, -1))

    @property
    def num_free(self) -> int:
        return len(self._free)

    def allocate(self, n: int) -> list[int]:
        if n > len(self._free):
            raise MemoryError(f"KV cache: need {n} blocks, {len(self._free)} free")
        out = self._free[len(self._free) - n:][::-1]
        del self._free[len(self._free) - n:]
        return out

    def free(self, blocks: list[int]) -> None:
        self._free.extend(reversed(blocks))


@dataclass
class SeqBlocks:
    """One sequence's block tables. chunk_start: absolute position of slot 0 of the chunked table."""

    tables: dict[str, list[int]] = field(default_factory=lambda: {k: [] for k in KINDS})
    chunk_start: int = 0


class BlockManager:
    """Per-pool allocators and the block-table rules of both pools."""

    def __init__(self, cfg: Llama4Config, num_blocks: int | dict[str, int], block_size: int):
        """num_blocks: blocks per pool ({"global": n, "chunked": m}, see engine/memory.plan_kv_pools);
        an int gives every pool that many."""
        self.cfg, self.block_size = cfg, block_size
        self.chunk = cfg.attention_chunk_size
        layer_kind = layer_kinds(cfg)
        self.kind_of_layer = layer_kind
        self.index_in_kind = [layer_kind[:i].count(layer_kind[i]) for i in range(len(layer_kind))]
        self.layer_counts = {k: layer_kind.count(k) for k in KINDS}
        self.kinds = [k for k in KINDS if self.layer_counts[k]]
        blocks = num_blocks if isinstance(num_blocks, dict) else dict.fromkeys(self.kinds, num_blocks)
        missing = [k for k in self.kinds if blocks.get(k, 0) < 1]
        if missing:
            raise ValueError(f"KV cache num_blocks {num_blocks!r}: pool(s) {missing} need >= 1 block "
                             f"(this model has {self.layer_counts} layers per pool)")
        self.num_blocks = {k: int(blocks[k]) for k in self.kinds}
        self.allocators = {k: BlockAllocator(self.num_blocks[k]) for k in self.kinds}

    def blocks_needed(self, seq: SeqBlocks, start: int, end: int) -> dict[str, int]:
        """Blocks to add so positions [start, end) have slots; chunked counts assume the release
        of old-chunk blocks that `reserve` does first."""
        need = {}
        for kind in self.kinds:
            if kind == "chunked":
                cs = start // self.chunk * self.chunk
                have = len(seq.tables[kind]) if cs == seq.chunk_start else 0
                need[kind] = max(0, -(-(end - cs) // self.block_size) - have)
            else:
                need[kind] = max(0, -(-end // self.block_size) - len(seq.tables[kind]))
        return need

    def can_reserve(self, seq: SeqBlocks, start: int, end: int) -> bool:
        need = self.blocks_needed(seq, start, end)
        freed = len(seq.tables.get("chunked", [])) if ("chunked" in self.kinds and
                                                      start // self.chunk * self.chunk != seq.chunk_start) else 0
        return all(need[k] <= self.allocators[k].num_free + (freed if k == "chunked" else 0) for k in self.kinds)

    def reserve(self, seq: SeqBlocks, start: int, end: int) -> None:
        """Make positions [start, end) (all in one attention chunk) writable."""
        if "chunked" in self.kinds:
            cs = start // self.chunk * self.chunk
            if (end - 1) // self.chunk * self.chunk != cs:
                raise ValueError(f"KV reserve: positions [{start}, {end}) span two attention chunks")
            if cs != seq.chunk_start:  # crossed into a new chunk: the old one is never read again
                self.allocators["chunked"].free(seq.tables["chunked"])
                seq.tables["chunked"], seq.chunk_start = [], cs
        need = self.blocks_needed(seq, start, end)
        for kind in self.kinds:
            seq.tables[kind] += self.allocators[kind].allocate(need[kind])

    def release(self, seq: SeqBlocks) -> None:
        for kind in self.kinds:
            self.allocators[kind].free(seq.tables[kind])
            seq.tables[kind] = []
        seq.chunk_start = 0

    def usage(self) -> dict:
        total = sum(a.num_blocks for a in self.allocators.values())
        used = sum(a.num_blocks - a.num_free for a in self.allocators.values())
        return {"kv_blocks_used": used, "kv_blocks_total": total, "kv_usage": used / max(total, 1)}

    # -- slot maps (runner side) ----------------------------------------------------------------
    def slots(self, seq: SeqBlocks, kind: str, positions: range) -> list[int]:
        base = seq.chunk_start if kind == "chunked" else 0
        table, bs = seq.tables[kind], self.block_size
        return [table[(p - base) // bs] * bs + (p - base) % bs for p in positions]

    def visible_range(self, seq: SeqBlocks, kind: str, end: int) -> range:
        """Positions a query at end-1 (and earlier queries of this step) may read from this kind's cache."""
        return range(seq.chunk_start if kind == "chunked" else 0, end)
