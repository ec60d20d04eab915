"""Prefix caching end to end: greedy outputs identical with caching on and off (repeated prompts, a
shared prefix across an attention-chunk boundary, after preemption, with FP8 KV), and the cache
actually hit (counters), on tiny-scout (attention chunk 32, blocks of 8)."""
import pytest
import torch

from amd_llama4 import LLM, SamplingParams, load_model
from amd_llama4.engine.llm_engine import EngineArgs, LLMEngine

GREEDY = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny-scout")


def _ids(n, seed):
    return torch.randint(5, 500, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def _generate(eng, waves, sp=GREEDY):
    """Each wave of prompts runs to completion before the next is added (later waves can hit the
    cache the earlier ones filled). -> token ids per prompt, in order."""
    out = []
    for wave in waves:
        base = len(out)
        for i, p in enumerate(wave):
            eng.add_request(str(base + i), p, sp)
        final = {}
        while eng.has_unfinished():
            for o in eng.step():
                if o.finished:
                    final[o.request_id] = o
        out += [final[str(base + i)].outputs[0].token_ids for i in range(len(wave))]
    return out


def _both(tiny, waves, **kw):
    """-> (outputs with caching off, outputs with caching on, the cached engine's stats)."""
    off = _generate(LLMEngine(EngineArgs(model="tiny-scout", block_size=8, enable_prefix_caching=False, **kw),
                              model=tiny), waves)
    eng = LLMEngine(EngineArgs(model="tiny-scout", block_size=8, **kw), model=tiny)
    on = _generate(eng, waves)
    stats = eng.stats()
    assert stats["kv_blocks_used"] == 0
    return off, on, stats


def test_repeated_prompts_identical_and_hit(tiny):
    prompts = [_ids(n, seed=n) for n in (7, 40, 77)]
    off, on, stats = _both(tiny, [prompts, prompts[::-1]])
    assert on == off and on[:3] == on[3:][::-1]
    # second wave: every full block but the one holding the last prompt token
    assert stats["prefix_cache_hits"] == 0 + 32 + 72
    assert stats["prefix_cache_queries"] == 2 * (7 + 40 + 77)


def test_shared_prefix_across_chunk_boundary(tiny):
    shared = _ids(45, seed=1)  # chunk 0 and 13 tokens of chunk 1
    first = [shared + _ids(3, seed=2)]
    later = [shared + _ids(n, seed=10 + n) for n in (1, 9, 30)]
    off, on, stats = _both(tiny, [first, later], max_num_batched_tokens=16, max_num_seqs=16)
    assert on == off
    assert stats["prefix_cache_hits"] == 3 * 40  # 5 full blocks of the shared 45 tokens, for each


def test_after_preemption(tiny):
    shared = _ids(30, seed=3)
    prompts = [shared + _ids(n, seed=20 + n) for n in (2, 5, 9, 14)]
    sp_len = 40  # each sequence grows to ~80 tokens; 24 global blocks hold ~2 of them
    sp = SamplingParams(temperature=0, max_tokens=sp_len, ignore_eos=True)
    off = LLMEngine(EngineArgs(model="tiny-scout", block_size=8, enable_prefix_caching=False, num_kv_blocks=24),
                    model=tiny)
    eng = LLMEngine(EngineArgs(model="tiny-scout", block_size=8, num_kv_blocks=24), model=tiny)
    seqs = []
    for i, p in enumerate(prompts):
        eng.add_request(str(i), p, sp)
        seqs.append(eng.scheduler.find(str(i)))
    final = {}
    while eng.has_unfinished():
        for o in eng.step():
            if o.finished:
                final[o.request_id] = o.outputs[0].token_ids
    assert sum(s.num_preemptions for s in seqs) > 0
    assert eng.stats()["prefix_cache_hits"] > 0 and eng.stats()["kv_blocks_used"] == 0
    assert [final[str(i)] for i in range(4)] == _generate(off, [prompts], sp)


def test_fp8_kv(tiny):
    shared = _ids(50, seed=4)
    waves = [[shared + _ids(4, seed=5)], [shared + _ids(4, seed=5), shared + _ids(20, seed=6)]]
    off, on, stats = _both(tiny, waves, kv_cache_dtype="fp8", max_num_batched_tokens=16, max_num_seqs=16)
    assert on == off and on[0] == on[1]
    assert stats["prefix_cache_hits"] == 48 * 2


def test_llm_api_flag():
    sp = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
    prompt = "A long shared system prompt that repeats " * 4
    outs = {}
    for caching in (False, True):
        llm = LLM("tiny-scout", block_size=8, enable_prefix_caching=caching)
        outs[caching] = [o.outputs[0].token_ids for o in llm.generate([prompt], sp) + llm.generate([prompt], sp)]
        hits = llm.engine.stats()["prefix_cache_hits"]
        assert (hits > 0) == caching
    assert outs[True] == outs[False]
