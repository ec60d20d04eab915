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

from collections import OrderedDict
from dataclasses import dataclass, field

from amd_llama4.config import Llama4Config

KINDS = ("global", "chunked")


def layer_kinds(cfg: Llama4Config) -> list[str]:
    """The pool each layer's K/V lives in: 'chunked' for chunk-local RoPE layers, else 'global'."""
    return ["chunked" if (cfg.uses_rope(i) and cfg.attention_chunk_size) else "global"
            for i in range(cfg.num_hidden_layers)]


class BlockAllocator:
    """One pool's blocks: a reference count per block, and for automatic prefix caching a content
    hash per full block (engine/prefix_cache.py). A block whose count drops to 0 keeps its hash and
    waits in an LRU queue (oldest first), where a later request can take it back; it is evicted
    (hash dropped) only when a fresh block is needed and no never-cached free block is left.
    Never-cached free blocks are reused LIFO, which keeps recently freed blocks warm."""

    def __init__(self, num_blocks: int):
        self.num_blocks = num_blocks
        self._free = list(range(num_blocks - 1, -1, -1))  # ref 0, no hash; the top is the end
        self._lru: OrderedDict[int, None] = OrderedDict()  # ref 0, hashed; oldest first
        self._ref = [0] * num_blocks
        self.hash_of: dict[int, bytes] = {}
        self.block_of: dict[bytes, int] = {}

    @property
    def num_free(self) -> int:
        """Blocks an allocation may take: never-cached free ones plus evictable cached ones."""
        return len(self._free) + len(self._lru)

    @property
    def num_cached(self) -> int:
        return len(self.block_of)

    def ref_count(self, block: int) -> int:
        return self._ref[block]

    def allocate(self, n: int) -> list[int]:
        if n > self.num_free:
            raise MemoryError(f"KV cache: need {n} blocks, {self.num_free} free")
        take = min(n, len(self._free))
        out = self._free[len(self._free) - take:][::-1]
        del self._free[len(self._free) - take:]
        for _ in range(n - take):  # evict the least recently released cached blocks
            block, _ = self._lru.popitem(last=False)
            del self.block_of[self.hash_of.pop(block)]
            out.append(block)
        for b in out:
            self._ref[b] = 1
        return out

    def free(self, blocks: list[int]) -> None:
        """Drop one reference to each block. In reverse order, so a sequence's tail blocks (the
        least likely to be shared) are the first evicted and its first blocks reused first."""
        for b in reversed(blocks):
            self._ref[b] -= 1
            if self._ref[b] == 0:
                if b in self.hash_of:
                    self._lru[b] = None
                else:
                    self._free.append(b)
            elif self._ref[b] < 0:
                raise RuntimeError(f"KV block {b} freed more often than it was taken (block_manager bug)")

    # -- prefix caching -------------------------------------------------------------------------
    def lookup(self, key: bytes) -> int | None:
        return self.block_of.get(key)

    def take(self, block: int) -> None:
        """One more reference to a cached block (a prefix-cache hit)."""
        if self._ref[block] == 0:
            del self._lru[block]
        self._ref[block] += 1

    def register(self, block: int, key: bytes) -> None:
        """Record that a full, computed block holds the content `key`. A block already hashed, or a
        key another block already holds (computed twice concurrently), is left as it is."""
        if block not in self.hash_of and key not in self.block_of:
            self.hash_of[block], self.block_of[key] = key, block


@dataclass
class SeqBlocks:
    """One sequence's block tables. chunk_start: absolute position of slot 0 of the chunked table.
    registered: per pool, how many leading blocks of the table the prefix cache has seen full."""

    tables: dict[str, list[int]] = field(default_factory=lambda: {k: [] for k in KINDS})
    chunk_start: int = 0
    registered: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))


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
        # tokens looked up in / found in the prefix cache (vLLM's prefix_cache_queries / _hits)
        self.prefix_cache_stats = {"prefix_cache_queries": 0, "prefix_cache_hits": 0}

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

    def covers(self, seq: SeqBlocks, start: int, end: int) -> bool:
        """Positions [start, end) already have slots: reserve(seq, start, end) would change nothing
        (the decode step's usual case: a cheap test instead of blocks_needed per pool)."""
        bs = self.block_size
        for kind in self.kinds:
            if kind == "chunked":
                cs = seq.chunk_start
                if start // self.chunk * self.chunk != cs or (end - 1) // self.chunk * self.chunk != cs \
                        or end - cs > len(seq.tables[kind]) * bs:
                    return False
            elif end > len(seq.tables[kind]) * bs:
                return False
        return True

    def can_reserve(self, seq: SeqBlocks, start: int, end: int) -> bool:
        need = self.blocks_needed(seq, start, end)
        freed = 0
        if "chunked" in self.kinds and start // self.chunk * self.chunk != seq.chunk_start:
            # the old chunk's blocks come back only where this sequence holds the last reference
            alloc = self.allocators["chunked"]
            freed = sum(alloc.ref_count(b) == 1 for b in seq.tables["chunked"])
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
                seq.registered["chunked"] = 0
        need = self.blocks_needed(seq, start, end)
        for kind in self.kinds:
            if need[kind]:
                seq.tables[kind] += self.allocators[kind].allocate(need[kind])

    def release(self, seq: SeqBlocks) -> None:
        """Drop the sequence's references (blocks the prefix cache holds stay cached)."""
        for kind in self.kinds:
            self.allocators[kind].free(seq.tables[kind])
            seq.tables[kind] = []
            seq.registered[kind] = 0
        seq.chunk_start = 0

    def usage(self) -> dict:
        """Blocks referenced by sequences (cached blocks nobody references count as free), and the
        prefix cache's counters in tokens (engine/prefix_cache.py keeps them up to date)."""
        total = sum(a.num_blocks for a in self.allocators.values())
        used = sum(a.num_blocks - a.num_free for a in self.allocators.values())
        return {"kv_blocks_used": used, "kv_blocks_total": total, "kv_usage": used / max(total, 1),
                "kv_blocks_cached": sum(a.num_cached for a in self.allocators.values()),
                **self.prefix_cache_stats}

    # -- slot maps (runner side) ----------------------------------------------------------------
    def slots(self, seq: SeqBlocks, kind: str, positions: range) -> list[int]:
        base = seq.chunk_start if kind == "chunked" else 0
        table, bs = seq.tables[kind], self.block_size
        return [table[(p - base) // bs] * bs + (p - base) % bs for p in positions]

    def visible_range(self, seq: SeqBlocks, kind: str, end: int) -> range:
        """Positions a query at end-1 (and earlier queries of this step) may read from this kind's cache."""
        return range(seq.chunk_start if kind == "chunked" else 0, end)
