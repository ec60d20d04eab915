"""build_step_inputs built from Python ints (engine/step_inputs.py) against a vectorised torch
reference of the same rules: every field, dtype and shape, on random mixes of prefill pieces and
decodes over both KV pools (chunk starts mid-block), graph padding with narrow and very wide tables,
and the errors."""
import random

import pytest
import torch

from amd_llama4.config import preset
from amd_llama4.engine.block_manager import SeqBlocks
from amd_llama4.engine.kv_cache import KVCache
from amd_llama4.engine.step_inputs import StepInputs, build_step_inputs


def _reference(cache, seqs, tokens, starts, pad_to=None, widths=None) -> StepInputs:
    """The rules as tensor ops: row of each token, positions, slot = table[off // bs] * bs + off % bs."""
    src = None
    if pad_to is not None:
        pick = list(range(len(seqs))) + [0] * (pad_to - len(seqs))
        seqs, tokens, starts = [seqs[i] for i in pick], [tokens[i] for i in pick], [starts[i] for i in pick]
        src = torch.tensor(pick)
    B = len(seqs)
    n_tok = torch.tensor([len(t) for t in tokens])
    cu = torch.cat([torch.zeros(1, dtype=torch.long), n_tok.cumsum(0)])
    row = torch.repeat_interleave(torch.arange(B), n_tok)
    pos = torch.tensor(starts)[row] + torch.arange(int(cu[-1])) - cu[:-1][row]
    tables, seq_lens, first_pos, slots = {}, {}, {}, {}
    for kind in cache.kinds:
        rows = [s.tables[kind] for s in seqs]
        width = widths[kind] if widths else max(1, max(len(r) for r in rows))
        tab = torch.zeros(B, width, dtype=torch.int32)
        for b, r in enumerate(rows):
            tab[b, :len(r)] = torch.tensor(r, dtype=torch.int32)
        base = torch.tensor([s.chunk_start if kind == "chunked" else 0 for s in seqs])
        off = pos - base[row]
        bs = cache.block_size
        slots[kind] = tab.long()[row, off // bs] * bs + off % bs
        tables[kind], first_pos[kind] = tab, base.int()
        seq_lens[kind] = (torch.tensor(starts) + n_tok - base).int()
    ids = torch.tensor([t for ts in tokens for t in ts])
    return StepInputs(ids, pos, pos.int(), cu.int(), cu[1:] - 1, src, tables, seq_lens, first_pos, slots)


def _assert_same(got: StepInputs, want: StepInputs):
    assert (got.src is None) == (want.src is None)
    for g, w in zip(got._fields(), want._fields(), strict=True):
        assert g.dtype == w.dtype and g.shape == w.shape and g.is_contiguous(), (g.dtype, w.dtype, g.shape, w.shape)
        torch.testing.assert_close(g, w, rtol=0, atol=0)
    assert sorted(got.tables) == sorted(want.tables)


def _cache(block_size, chunk, blocks=400):
    cfg = preset("tiny-scout", attention_chunk_size=chunk)  # 3 chunked layers + 1 global
    return KVCache(cfg, num_blocks=blocks, block_size=block_size, dtype=torch.float32, device="cpu", allocate=False)


def _grow(cache, seq, start, end):
    """Reserve [start, end) piecewise, never across an attention chunk (as the scheduler does)."""
    p = start
    while p < end:
        stop = min(end, (p // cache.chunk + 1) * cache.chunk)
        cache.reserve(seq, p, stop)
        p = stop


@pytest.mark.parametrize("seed", range(6))
def test_random_ragged_steps_match_the_reference(seed):
    rnd = random.Random(seed)
    bs, chunk = rnd.choice([(3, 8), (4, 32), (5, 12), (16, 40)])
    cache = _cache(bs, chunk)
    seqs, tokens, starts = [], [], []
    for _ in range(rnd.randint(1, 7)):
        done, n = rnd.randint(0, 70), rnd.choice([1, 1, rnd.randint(1, 13)])
        n = min(n, (done // chunk + 1) * chunk - done)  # a step's piece stays in one chunk
        seq = SeqBlocks()
        _grow(cache, seq, 0, done + n)
        seqs.append(seq)
        tokens.append([rnd.randint(0, 511) for _ in range(n)])
        starts.append(done)
    _assert_same(build_step_inputs(cache, seqs, tokens, starts), _reference(cache, seqs, tokens, starts))


@pytest.mark.parametrize("width", [19, 5000])  # a listed table, and one mostly padding (built as a tensor)
def test_padded_decode_matches_the_reference(width):
    cache = _cache(4, 32)
    seqs, starts = [SeqBlocks() for _ in range(3)], [5, 34, 70]
    for seq, s in zip(seqs, starts):
        _grow(cache, seq, 0, s + 1)
    widths = {"global": width, "chunked": 8}
    got = build_step_inputs(cache, seqs, [[3], [4], [9]], starts, pad_to=8, widths=widths)
    _assert_same(got, _reference(cache, seqs, [[3], [4], [9]], starts, pad_to=8, widths=widths))
    assert got.tables["global"].shape == (8, width) and got.src.tolist() == [0, 1, 2, 0, 0, 0, 0, 0]


def test_batch_one_decode_fields():
    cache = _cache(16, 8192, blocks=64)
    seq = SeqBlocks()
    _grow(cache, seq, 0, 38)
    x = build_step_inputs(cache, [seq], [[77]], [37])
    assert x.ids.tolist() == [77] and x.positions.tolist() == [37] and x.q_pos.dtype == torch.int32
    assert x.cu_seqlens.tolist() == [0, 1] and x.last.tolist() == [0] and x.src is None
    for kind in cache.kinds:
        tab = seq.tables[kind]
        assert x.tables[kind].tolist() == [tab] and x.seq_lens[kind].tolist() == [38]
        assert x.slots[kind].tolist() == [tab[2] * 16 + 5] and x.first_pos[kind].tolist() == [0]
    # the fields are views of shared buffers: copying them out (graphs, devices) must see each alone
    widths = {k: x.tables[k].shape[1] + 2 for k in cache.kinds}
    padded = build_step_inputs(cache, [seq], [[77]], [37], pad_to=3, widths=widths)
    buf = StepInputs.empty(cache.kinds, 3, widths, torch.device("cpu"))
    _assert_same(buf.copy_(padded), padded)
    _assert_same(padded.rows(1), _reference(cache, [seq], [[77]], [37], pad_to=1, widths=widths))


def test_errors_name_the_problem():
    cache = _cache(4, 8)
    seq = SeqBlocks()
    _grow(cache, seq, 0, 5)
    with pytest.raises(ValueError, match="no reserved global KV block"):
        build_step_inputs(cache, [seq], [[1, 2, 3, 4]], [5])  # position 8 is past the 2 reserved blocks
    with pytest.raises(ValueError, match="sequence 1 has no tokens"):
        build_step_inputs(cache, [seq, seq], [[1], []], [4, 4])
    with pytest.raises(ValueError, match="more than the 1 a captured step's block table has"):
        build_step_inputs(cache, [seq], [[1]], [4], pad_to=2, widths={"global": 1, "chunked": 1})
    with pytest.raises(ValueError, match="one token per sequence"):
        build_step_inputs(cache, [seq], [[1, 2]], [3], pad_to=2)
    late = SeqBlocks()
    _grow(cache, late, 8, 10)  # chunk 1 only: chunk_start 8, a position before it has no slot
    with pytest.raises(ValueError, match="no reserved chunked KV block"):
        build_step_inputs(cache, [late], [[1]], [7])
