"""Ragged engine steps: the step's tokens flattened (no padding), the slot rule of its tensors, any mix
of prefill pieces and decodes in one step giving the full causal forward's logits, the LM head only on
the rows asked for."""
import random

import pytest
import torch

from amd_llama4.config import preset
from amd_llama4.engine.block_manager import SeqBlocks
from amd_llama4.engine.kv_cache import KVCache
from amd_llama4.engine.runner import ModelRunner, StepItem
from amd_llama4.engine.step_inputs import build_step_inputs
from amd_llama4.model.llama4 import Llama4ForCausalLM


@pytest.fixture(scope="module")
def model():
    # chunk 8 with block 3: chunks end mid-block; 4 layers = 3 chunked (RoPE) + 1 global (NoPE)
    cfg = preset("tiny-scout", attention_chunk_size=8, num_local_experts=4)
    return Llama4ForCausalLM(cfg).init_random(seed=3, std=0.08).eval()


def _grow(cache, seq, end, piece=3):
    """Reserve [0, end) as prefill/decode pieces would (never across an attention chunk)."""
    chunk = cache.chunk or end + 1
    p = 0
    while p < end:
        stop = min(end, p + piece, (p // chunk + 1) * chunk)
        cache.reserve(seq, p, stop)
        p = stop


def test_step_tensors_follow_the_slot_rule():
    """Per token: the slot KVCache.slots gives; per sequence: its table, keys visible to its last
    token, position of slot 0 (chunk start for chunked layers); T = real tokens, no padding."""
    cfg = preset("tiny-scout")  # chunk 32
    cache = KVCache(cfg, num_blocks=64, block_size=4, dtype=torch.float32, device="cpu", allocate=False)
    # (context already cached, new tokens): a decode, a piece crossing into chunk 1's middle, a 7-token prompt
    shape = [(0, 1), (38, 7), (0, 7), (44, 1)]
    seqs = [SeqBlocks() for _ in shape]
    for seq, (done, n) in zip(seqs, shape):
        _grow(cache, seq, done + n)
    x = build_step_inputs(cache, seqs, [list(range(100 + i, 100 + i + n)) for i, (_, n) in enumerate(shape)],
                          [d for d, _ in shape])
    T = sum(n for _, n in shape)
    assert x.ids.shape == (T,) and x.src is None and x.batch == 4
    assert x.cu_seqlens.tolist() == [0, 1, 8, 15, 16] and x.last.tolist() == [0, 7, 14, 15]
    assert x.positions.tolist() == [0, *range(38, 45), *range(7), 44] == x.q_pos.tolist()
    for kind in cache.kinds:
        want_slots = []
        for b, (seq, (done, n)) in enumerate(zip(seqs, shape)):
            want_slots += cache.slots(seq, kind, range(done, done + n))
            first = seq.chunk_start if kind == "chunked" else 0
            assert x.first_pos[kind][b] == first and x.seq_lens[kind][b] == done + n - first
            tab = seq.tables[kind]
            assert x.tables[kind][b, :len(tab)].tolist() == tab and (x.tables[kind][b, len(tab):] == 0).all()
        assert x.slots[kind].tolist() == want_slots
        assert x.tables[kind].dtype == x.seq_lens[kind].dtype == x.first_pos[kind].dtype == torch.int32


def test_padded_decode_step_repeats_row_zero():
    cfg = preset("tiny-scout")
    cache = KVCache(cfg, num_blocks=64, block_size=4, dtype=torch.float32, device="cpu", allocate=False)
    seqs = [SeqBlocks(), SeqBlocks()]
    _grow(cache, seqs[0], 6)
    _grow(cache, seqs[1], 35)
    x = build_step_inputs(cache, seqs, [[3], [4]], [5, 34], pad_to=4, widths={"global": 20, "chunked": 8})
    assert x.ids.tolist() == [3, 4, 3, 3] and x.src.tolist() == [0, 1, 0, 0]
    assert x.cu_seqlens.tolist() == [0, 1, 2, 3, 4] and x.tables["global"].shape == (4, 20)
    for kind in cache.kinds:
        assert x.slots[kind][2:].eq(x.slots[kind][0]).all() and x.tables[kind][3].equal(x.tables[kind][0])
    with pytest.raises(ValueError, match="one token per sequence"):
        build_step_inputs(cache, seqs, [[3, 4], [4]], [4, 34], pad_to=4)
    with pytest.raises(ValueError, match="max_model_len"):
        build_step_inputs(cache, seqs, [[3], [4]], [5, 34], pad_to=2, widths={"global": 2, "chunked": 8})


def test_unreserved_positions_and_empty_items_are_clear_errors():
    cfg = preset("tiny-scout")
    cache = KVCache(cfg, num_blocks=64, block_size=4, dtype=torch.float32, device="cpu", allocate=False)
    seq = SeqBlocks()
    _grow(cache, seq, 5)
    with pytest.raises(ValueError, match="no reserved"):
        build_step_inputs(cache, [seq], [[1, 2, 3, 4]], [6])  # positions 8, 9: a third block, never reserved
    with pytest.raises(ValueError, match="no tokens"):
        build_step_inputs(cache, [seq], [[]], [5])
    with pytest.raises(ValueError, match="at least one"):
        build_step_inputs(cache, [], [], [])


class _FakeQuantKV:
    """The cache-less causal forward with K/V rounded through fp8 as KVCache.write stores them (a
    scale per token and KV head: amax / fp8 max): the exact reference of an fp8-KV engine step."""

    def attend(self, layer, q, k, v, positions, scale, chunk_size):
        from amd_llama4 import ops

        def rt(x):  # [B, S, Hkv, D]
            s = x.abs().amax(-1, keepdim=True).clamp(min=1e-12) / ops.FP8_MAX["e4m3fn"]
            return ((x / s).clamp(-ops.FP8_MAX["e4m3fn"], ops.FP8_MAX["e4m3fn"]).to(torch.float8_e4m3fn).float() * s)

        return ops.attention(q, rt(k), rt(v), positions, positions, scale, chunk_size)


def _full_logits(model, ids, kv="auto"):
    # [S, V], the cache-less causal forward
    x = torch.tensor([ids])
    return model(x, torch.arange(len(ids))[None], _FakeQuantKV() if kv == "fp8" else None)[0]


@pytest.mark.parametrize("kv", ["auto", "fp8"])
def test_mixed_ragged_steps_match_the_full_forward(model, kv):
    """Random mixes of prefill pieces (odd sizes, chunk crossings) and decodes in one step, items in
    any order: every new token's logits equal the full forward's at its position (fp8 KV: the forward
    with K/V rounded through fp8 per token, the paged op's per-token-scale path)."""
    rng = random.Random(0)
    lengths = [1, 7, 29, 13, 2]
    prompts = [[rng.randrange(3, model.config.vocab_size) for _ in range(n)] for n in lengths]
    cache = KVCache(model.config, 80, 3, torch.float32, "cpu", kv, "e4m3fn")
    runner = ModelRunner(model, cache, "cpu")
    chunk = model.config.attention_chunk_size
    seqs, done = [SeqBlocks() for _ in prompts], [0] * len(prompts)
    toks = [list(p) for p in prompts]
    steps = mixed = 0
    while any(len(t) < len(p) + 4 for t, p in zip(toks, prompts)):
        order = [i for i in range(len(prompts)) if len(toks[i]) < len(prompts[i]) + 4]
        rng.shuffle(order)
        order = order[:rng.randint(1, len(order))]
        items = []
        for i in order:
            left = len(toks[i]) - done[i]
            n = min(left, rng.choice([1, 2, 5, 9]), (done[i] // chunk + 1) * chunk - done[i])
            cache.reserve(seqs[i], done[i], done[i] + n)
            items.append(StepItem(seqs[i], toks[i][done[i]:done[i] + n], done[i]))
        mixed += len({len(it.tokens) == 1 for it in items}) == 2
        hidden = runner.hidden_states(items)
        assert hidden.shape[0] == sum(len(it.tokens) for it in items)  # no padding
        logits = model.compute_logits(hidden)
        row = 0
        for i, it in zip(order, items):
            n = len(it.tokens)
            ref = _full_logits(model, toks[i][:done[i] + n], kv)[done[i]:]
            torch.testing.assert_close(logits[row:row + n], ref, atol=2e-4, rtol=2e-4,
                                       msg=lambda m: f"step {steps} seq {i}: {m}")
            row += n
            done[i] += n
            if done[i] == len(toks[i]):  # sampled: greedy from the reference
                toks[i].append(int(ref[-1].argmax()))
        steps += 1
    assert mixed >= 3  # steps that held both prefill pieces and decodes


def test_execute_runs_the_lm_head_on_the_rows_asked_for(model):
    cache = KVCache(model.config, 40, 3, torch.float32, "cpu")
    runner = ModelRunner(model, cache, "cpu")
    seqs = [SeqBlocks() for _ in range(3)]
    items = []
    for s, (start, n) in zip(seqs, [(0, 5), (0, 1), (0, 7)]):
        cache.reserve(s, start, start + n)
        items.append(StepItem(s, list(range(10, 10 + n)), start))
    hidden = runner.hidden_states(items)
    every = runner.execute(items)  # rewrites the same K/V: same results
    torch.testing.assert_close(every, model.compute_logits(hidden[[4, 5, 12]]))
    torch.testing.assert_close(runner.execute(items, rows=[2, 0]), every[[2, 0]])
    assert runner.execute(items, rows=[]).shape == (0, model.config.vocab_size)


def _require_native_paged_attention():
    from amd_llama4.ops import native

    if not (native.available() and hasattr(native._C, "paged_attention")):
        pytest.skip("needs the native paged_attention kernel (the torch backend's decode form gathers "
                    "B x max_L keys by design: it is the capturable one)")


def test_a_step_allocates_nothing_of_batch_times_longest_context(model):
    """No dense copy of the cache: no tensor made during a decode step of 4 short sequences and one
    long one is as large as [B, longest context, Hkv, D] (what the old gather path built per layer)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    _require_native_paged_attention()
    cfg = model.config
    lengths = [3, 5, 2, 4, 150]
    cache = KVCache(cfg, 120, 4, torch.float32, "cpu")
    runner = ModelRunner(model, cache, "cpu")
    seqs = [SeqBlocks() for _ in lengths]
    for s, n in zip(seqs, lengths):
        p = 0
        while p < n:  # prefill, a chunk at a time
            e = min(n, (p // cfg.attention_chunk_size + 1) * cfg.attention_chunk_size)
            cache.reserve(s, p, e)
            runner.execute([StepItem(s, list(range(3, 3 + e - p)), p)])
            p = e
        cache.reserve(s, n, n + 1)
    dense = len(lengths) * max(lengths) * cfg.num_key_value_heads * cfg.head_dim
    biggest = []

    class Sizes(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            seen = {a.untyped_storage().data_ptr() for a in (*args, *(kwargs or {}).values())
                    if isinstance(a, torch.Tensor)}
            for t in out if isinstance(out, (tuple, list)) else (out,):
                # new memory only: views of the cache and in-place writes into it are not copies
                if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in seen:
                    biggest.append((t.numel(), str(func)))
            return out

    with Sizes():
        runner.execute([StepItem(s, [7], n) for s, n in zip(seqs, lengths)])
    top = max(biggest)
    assert top[0] < dense // 4, f"{top[1]} made {top[0]} elements; a dense [B, L, Hkv, D] copy is {dense}"


def test_long_sequence_among_short_ones_costs_its_tokens_not_batch_times_length():
    """perf/bench_long_decode.py at a small scale, one thread (the bound, not the noise), loose bound:
    a dense [B, max_L] gather of the cache made this ~23x here; reading pages in place ~2x."""
    _require_native_paged_attention()
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "perf" / "bench_long_decode.py"
    spec = importlib.util.spec_from_file_location("bench_long_decode", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        r = bench.measure(short=16, short_len=16, long_len=2000, steps=5, warmup=1, hidden=512, layers=2,
                          experts=2)
    finally:
        torch.set_num_threads(threads)
    assert r["ratio"] < 8, r
