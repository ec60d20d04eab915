"""One engine step as flat (ragged) tensors, and the model's view of the paged cache for it.

The step's new tokens of B sequences are concatenated: sequence b owns rows cu_seqlens[b] :
cu_seqlens[b+1] of the T rows, nothing is padded to the longest piece, and attention reads K/V in
place through per-kind block tables (ops.paged_attention): no dense copy of the cache is made.

A decode step replayed from a HIP/CUDA graph has static shapes: one token per row, rows padded to a
batch-size bucket and tables to a fixed width. Padding rows repeat row 0 (token, position, tables),
so they compute finite values, and write row 0's K/V to row 0's slot (`src`), the same bytes as row 0
itself: duplicate slots in one index_copy_ then never race."""
from __future__ import annotations

import array
from dataclasses import dataclass

import torch

from amd_llama4.engine.block_manager import SeqBlocks
from amd_llama4.engine.kv_cache import KVCache
from amd_llama4.ops.paged_attention import paged_attention


@dataclass
class StepInputs:
    """Everything a step reads; the static buffers of a captured decode graph have this form."""

    ids: torch.Tensor  # [T] long
    positions: torch.Tensor  # [T] long, absolute
    q_pos: torch.Tensor  # [T] int32, the same positions for the attention op
    cu_seqlens: torch.Tensor  # [B+1] int32, sequence b's rows: cu_seqlens[b] .. cu_seqlens[b+1]-1
    last: torch.Tensor  # [B] long, row of each sequence's last new token (its logits)
    src: torch.Tensor | None  # [T] long, the row whose K/V a row writes (graphs' padding: 0); None: itself
    tables: dict[str, torch.Tensor]  # kind -> [B, W] int32 block table
    seq_lens: dict[str, torch.Tensor]  # kind -> [B] int32, keys in the table (this step's included)
    first_pos: dict[str, torch.Tensor]  # kind -> [B] int32, position of the table's slot 0
    slots: dict[str, torch.Tensor]  # kind -> [T] long, flat cache slot of each new token's K/V

    @property
    def batch(self) -> int:
        return self.last.shape[0]

    def _fields(self):
        yield from (t for t in (self.ids, self.positions, self.q_pos, self.cu_seqlens, self.last, self.src)
                    if t is not None)
        for d in (self.tables, self.seq_lens, self.first_pos, self.slots):
            yield from (d[k] for k in sorted(d))

    def _map(self, tok, seq, cu) -> "StepInputs":
        md = lambda d, f: {k: f(t) for k, t in d.items()}  # noqa: E731
        return StepInputs(tok(self.ids), tok(self.positions), tok(self.q_pos), cu(self.cu_seqlens), seq(self.last),
                          None if self.src is None else tok(self.src), md(self.tables, seq),
                          md(self.seq_lens, seq), md(self.first_pos, seq), md(self.slots, tok))

    def rows(self, n: int) -> "StepInputs":
        """Views of the first n sequences of a one-token-per-row (decode) step (same storage)."""
        if self.ids.shape[0] != self.batch:
            raise ValueError(f"StepInputs.rows: {self.ids.shape[0]} tokens in {self.batch} sequences is not "
                             "a decode step (one token per row)")
        cut = lambda t: t[:n]  # noqa: E731
        return self._map(cut, cut, lambda t: t[:n + 1])

    def copy_(self, other: "StepInputs") -> "StepInputs":
        """In-place copy of `other` (same shapes) into these tensors; returns self."""
        for dst, s in zip(self._fields(), other._fields(), strict=True):
            if dst.shape != s.shape:
                raise ValueError(f"StepInputs.copy_: shape {tuple(s.shape)} into {tuple(dst.shape)}")
            dst.copy_(s, non_blocking=True)
        return self

    def to(self, device: torch.device) -> "StepInputs":
        # non_blocking: a host-to-device copy that never waits for the GPU (a blocking one is a sync)
        mv = lambda t: t.to(device, non_blocking=True)  # noqa: E731
        return self._map(mv, mv, mv)

    @staticmethod
    def empty(kinds, batch: int, widths: dict[str, int], device: torch.device) -> "StepInputs":
        """Static decode buffers, one token per row: block 0, position 0 (valid indices, whatever is
        replayed before a copy), each row its own sequence."""
        z = lambda *shape, dtype=torch.int32: torch.zeros(shape, dtype=dtype, device=device)  # noqa: E731
        return StepInputs(z(batch, dtype=torch.long), z(batch, dtype=torch.long), z(batch),
                          torch.arange(batch + 1, dtype=torch.int32, device=device),
                          torch.arange(batch, device=device), z(batch, dtype=torch.long),
                          {k: z(batch, widths[k]) for k in kinds}, {k: z(batch) for k in kinds},
                          {k: z(batch) for k in kinds}, {k: z(batch, dtype=torch.long) for k in kinds})


# Graph decode tables wider than this many padding zeros are filled as a tensor, not listed.
_MAX_LISTED_PADDING = 1 << 14


def build_step_inputs(cache: KVCache, seqs: list[SeqBlocks], tokens: list[list[int]], starts: list[int],
                      pad_to: int | None = None, widths: dict[str, int] | None = None) -> StepInputs:
    """Host tensors for one step: sequence b computes tokens[b] at positions starts[b] ... Its
    blocks must already be reserved (block_manager.reserve). pad_to: a decode step (one token per
    sequence) padded to that many rows (a graph bucket); widths: the static table width per kind
    (graphs; None: the widest table of this step).

    Host cost per step matters at batch 1 (a CPU int4 decode token takes ~3 ms), so every field is
    computed in Python ints (runs of positions and slots appended per sequence and per block: C loops
    inside list.extend) and the fields become views of two buffers, one per dtype, made by one
    array -> tensor copy each: a few torch calls instead of ~40 small ops. Small torch ops that go
    parallel cost far more than their work: with 2 threads on a busy machine, repeat_interleave
    (grain size 1) waited ~4 ms per step for the second thread."""
    n = len(seqs)
    if n == 0:
        raise ValueError("build_step_inputs: a step needs at least one sequence")
    lens = [len(t) for t in tokens]
    if min(lens) < 1:
        raise ValueError(f"build_step_inputs: sequence {lens.index(0)} has no tokens to compute")
    pick: list[int] = []  # graphs' padding: the source sequence of every row
    if pad_to is not None:
        if max(lens) != 1 or not n <= pad_to:
            raise ValueError(f"build_step_inputs: a padded (graph) step takes one token per sequence and at most "
                             f"{pad_to} sequences; got {n} sequences of up to {max(lens)} tokens")
        pick = list(range(n)) + [0] * (pad_to - n)
        seqs, tokens, starts, lens = [seqs[i] for i in pick], [tokens[i] for i in pick], \
            [starts[i] for i in pick], [1] * pad_to
    B = len(seqs)
    if max(lens) == 1:  # decode: one token per sequence
        ids, pos, cu = [t[0] for t in tokens], list(starts), list(range(B + 1))
    else:
        ids, pos, cu = [], [], [0]
        for toks, s, k in zip(tokens, starts, lens):
            ids += toks
            pos += range(s, s + k)
            cu.append(cu[-1] + k)
    bs = cache.block_size
    # the flat parts of the two buffers in field order: long (ids, positions, last, src, slots per
    # kind), int32 (q_pos, cu_seqlens, then per kind table, seq_lens, first_pos)
    longs, ints = [ids, pos, [c - 1 for c in cu[1:]], pick], [pos, cu]
    wide = {}  # kind -> [B, W] table made as a tensor (graph widths: mostly padding)
    for kind in cache.kinds:
        rows = [s.tables[kind] for s in seqs]
        n_blk = [len(r) for r in rows]
        longest = max(n_blk)
        width = widths[kind] if widths is not None else max(1, longest)
        if longest > width:
            raise ValueError(f"step: a sequence holds {longest} {kind} KV blocks, more than the {width} a "
                             "captured step's block table has; raise max_model_len or use enforce_eager")
        base = [s.chunk_start for s in seqs] if kind == "chunked" else [0] * B  # position of slot 0
        slots: list[int] = []
        for table, nb, s, k, b0 in zip(rows, n_blk, starts, lens, base):
            off = s - b0  # logical slot of the first new token
            if off < 0 or (off + k - 1) // bs >= nb:
                raise ValueError(f"step: a token's position has no reserved {kind} KV block (reserve the "
                                 "positions [start, end) of every item before the step)")
            if k == 1:
                slots.append(table[off // bs] * bs + off % bs)
                continue
            for blk in range(off // bs, (off + k - 1) // bs + 1):  # one run of slots per block touched
                shift = (table[blk] - blk) * bs  # logical -> flat cache slot within this block
                slots += range(shift + max(off, blk * bs), shift + min(off + k, blk * bs + bs))
        longs.append(slots)
        tab: list[int] = []
        if B * width - sum(n_blk) <= _MAX_LISTED_PADDING:
            for r, nb in zip(rows, n_blk):
                tab += r
                tab += [0] * (width - nb)
        else:
            wide[kind] = _wide_table(rows, width)
        ints += [tab, [s + k - b0 for s, k, b0 in zip(starts, lens, base)], base]
    lv = _buffer("q", torch.long, longs)
    iv = _buffer("i", torch.int32, ints)
    tables, seq_lens, first_pos, slots = {}, {}, {}, {}
    for j, kind in enumerate(cache.kinds):
        tab, seq_lens[kind], first_pos[kind] = iv[2 + 3 * j: 5 + 3 * j]
        tables[kind] = wide[kind] if kind in wide else tab.view(B, -1)
        slots[kind] = lv[4 + j]
    return StepInputs(lv[0], lv[1], iv[0], iv[1], lv[2], lv[3] if pad_to is not None else None,
                      tables, seq_lens, first_pos, slots)


def _buffer(code: str, dtype: torch.dtype, parts: list[list[int]]) -> tuple[torch.Tensor, ...]:
    """Views of one tensor holding the concatenated parts (an array's buffer, no per-element
    Python conversion as in torch.tensor(list))."""
    buf = array.array(code)
    for p in parts:
        buf.extend(p)
    if buf.itemsize != dtype.itemsize:  # 'q' / 'i' are 8 / 4 bytes on every platform torch runs on
        raise RuntimeError(f"build_step_inputs: array '{code}' holds {buf.itemsize}-byte ints, not {dtype}")
    return torch.frombuffer(buf, dtype=dtype).split_with_sizes([len(p) for p in parts])  # no Python wrapper


def _wide_table(rows: list[list[int]], width: int) -> torch.Tensor:
    """[B, width] int32 block table of mostly padding: zeros, then the real entries by flat index."""
    tab = torch.zeros(len(rows), width, dtype=torch.int32)
    at = [b * width + j for b, r in enumerate(rows) for j in range(len(r))]
    if at:
        tab.view(-1)[torch.tensor(at)] = torch.tensor([x for r in rows for x in r], dtype=torch.int32)
    return tab


class PagedStepCache:
    """The model's view of the paged cache for one step (implements model.llama4.KVCache): writes
    the step's K/V by slot, then attends through the block tables, reading the cache in place."""

    def __init__(self, cache: KVCache, inputs: StepInputs):
        self.cache, self.inputs = cache, inputs

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor,
               scale: float, chunk_size: int | None) -> torch.Tensor:
        # q: [1, T, Hq, D]; k, v: [1, T, Hkv, D] (the step's flat tokens) -> [1, T, Hq, D]
        c, x = self.cache, self.inputs
        kind = c.kind_of_layer[layer]
        k, v = k[0], v[0]
        if x.src is not None:
            k, v = k.index_select(0, x.src), v.index_select(0, x.src)
        c.write(layer, k, v, x.slots[kind])
        k_cache, v_cache, k_scale, v_scale = c.paged(layer)
        out = paged_attention(q[0], k_cache, v_cache, x.tables[kind], x.cu_seqlens, x.seq_lens[kind],
                              x.first_pos[kind], x.q_pos, scale, chunk_size, k_scale, v_scale)
        return out[None]
