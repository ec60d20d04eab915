"""Automatic prefix caching: full KV blocks found again by the content of everything before them.

A full block's key is a hash chained over the token ids of every block up to and including it
(plus an optional extra key per block, for image hashes), so equal keys mean equal K/V at every
layer. Blocks are registered once computed and full; a new (or preempted) sequence starts from the
longest run of its leading blocks still cached, taking one reference to each (block_manager keeps
the counts and the LRU queue of cached blocks nobody references).

Llama 4's two pools (block_manager): global-layer blocks are reused over the whole shared prefix.
Chunked-layer blocks hold positions relative to their attention chunk, and a sequence keeps only
its current chunk's, so a hit uses the chunked blocks of the chunk it ends in: the longest cached
run of them from that chunk's start; the hit is cut back to where that run ends (that part of the
chunk is recomputed; the global blocks before it are still reused). When the chunk size is not a
multiple of the block size, chunked blocks straddle global ones and are not cached: hits end at a
common multiple of both. A hit never covers the whole sequence: the last token is recomputed for
its logits.
"""
from __future__ import annotations

import hashlib
import math
from array import array
from typing import TYPE_CHECKING

from amd_llama4.engine.block_manager import BlockManager

if TYPE_CHECKING:
    from amd_llama4.engine.scheduler import Sequence


def hash_block(parent: bytes | None, tokens: list[int], extra: bytes | None = None) -> bytes:
    """Key of one full block: its tokens, the key of the block before it, and an optional extra key
    (e.g. the hash of an image whose tokens the block holds)."""
    h = hashlib.blake2b(parent or b"", digest_size=16)
    h.update(array("q", tokens).tobytes())
    if extra is not None:
        h.update(b"\x00extra")
        h.update(extra)
    return h.digest()


def block_hashes(seq: Sequence, n_blocks: int, block_size: int) -> list[bytes]:
    """Keys of seq's first n_blocks full blocks (extended on seq.block_hashes as tokens arrive)."""
    keys, toks = seq.block_hashes, seq.token_ids
    extra = seq.block_extra_keys or {}
    for j in range(len(keys), n_blocks):
        keys.append(hash_block(keys[-1] if keys else None, toks[j * block_size:(j + 1) * block_size],
                               extra.get(j)))
    return keys[:n_blocks]


class PrefixCache:
    """The lookup and registration rules over a BlockManager's pools; counters in its usage()."""

    def __init__(self, blocks: BlockManager):
        self.bm = blocks
        self.bs = blocks.block_size
        self.chunked = "chunked" in blocks.kinds
        # chunked blocks line up with global ones only when chunks are whole blocks
        self.cache_chunked = self.chunked and blocks.chunk % self.bs == 0
        self.align = math.lcm(self.bs, blocks.chunk) if self.chunked else self.bs

    def longest_hit(self, seq: Sequence) -> tuple[int, dict[str, list[int]], int]:
        """-> (tokens found, blocks per pool to take, chunk_start) for a sequence with nothing
        computed. Looks up only; `take` claims the blocks."""
        bm, bs = self.bm, self.bs
        keys = block_hashes(seq, (len(seq.token_ids) - 1) // bs, bs)  # leave the last token to compute
        g = len(keys)
        if "global" in bm.kinds:
            alloc = bm.allocators["global"]
            g = next((j for j, k in enumerate(keys) if alloc.lookup(k) is None), len(keys))
        hit = g * bs
        if self.cache_chunked:
            cs = hit // bm.chunk * bm.chunk
            alloc = bm.allocators["chunked"]
            found = keys[cs // bs:hit // bs]
            m = next((j for j, k in enumerate(found) if alloc.lookup(k) is None), len(found))
            hit = cs + m * bs
        elif self.chunked:
            hit = hit // self.align * self.align
        tables = {}
        for kind in bm.kinds:
            first = hit // bm.chunk * bm.chunk // bs if kind == "chunked" else 0
            tables[kind] = [bm.allocators[kind].lookup(k) for k in keys[first:hit // bs]]
        return hit, tables, (hit // bm.chunk * bm.chunk if self.chunked else 0)

    def take(self, seq: Sequence) -> int:
        """Start seq (nothing computed, no blocks) from its longest cached prefix: its tables get
        one reference to each hit block, num_computed the hit. -> tokens hit."""
        hit, tables, chunk_start = self.longest_hit(seq)
        if hit:
            for kind, blocks in tables.items():
                for b in blocks:
                    self.bm.allocators[kind].take(b)
                seq.blocks.tables[kind] = list(blocks)  # a new list: tp/wire.py sends it whole
                seq.blocks.registered[kind] = len(blocks)
            seq.blocks.chunk_start = chunk_start
            seq.num_computed = hit
        return hit

    def count(self, seq: Sequence, hit: int) -> None:
        """One admitted lookup: the sequence's tokens queried, `hit` of them found."""
        stats = self.bm.prefix_cache_stats
        stats["prefix_cache_queries"] += len(seq.token_ids)
        stats["prefix_cache_hits"] += hit

    def register(self, seq: Sequence) -> None:
        """Make seq's computed full blocks findable (call after the step that computed them)."""
        bm, bs, sb = self.bm, self.bs, seq.blocks
        full = seq.num_computed // bs
        for kind in bm.kinds:
            if kind == "chunked" and not self.cache_chunked:
                continue
            first = sb.chunk_start // bs if kind == "chunked" else 0  # table index 0 is this block
            table, done = sb.tables[kind], sb.registered[kind]
            n = min(full - first, len(table))
            if n <= done:
                continue
            keys = block_hashes(seq, first + n, bs)
            alloc = bm.allocators[kind]
            for i in range(done, n):
                alloc.register(table[i], keys[first + i])
            sb.registered[kind] = n
