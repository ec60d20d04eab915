"""Parallel sampling (n, best_of) and DELTA outputs in the engine and `LLM`: n choices per request,
per-sample seeds, best_of ranking, abort of every sample, prompt blocks shared through the prefix
cache, and per-step output cost that does not grow with the length."""
import pytest

from amd_llama4 import LLM, SamplingParams, load_model
from amd_llama4.engine.llm_engine import EngineArgs, LLMEngine
from amd_llama4.engine.outputs import OutputAccumulator
from amd_llama4.engine.sampling_params import RequestOutputKind

PROMPT = list(range(5, 31))  # 26 tokens: 6 full blocks of 4 + 2, all inside the first 32-token chunk
SAMPLE = dict(temperature=1.0, ignore_eos=True)


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny-scout")  # chunk 32, 4 layers (3 chunked + 1 global)


@pytest.fixture(scope="module")
def llm():
    return LLM("tiny-scout", block_size=4)


def _engine(model, **kw):
    return LLMEngine(EngineArgs(model="tiny-scout", block_size=4, **kw), model=model)


def test_n_choices_with_per_sample_seeds(llm):
    out = llm.generate(PROMPT, SamplingParams(n=4, max_tokens=6, seed=11, **SAMPLE))
    assert len(out) == 1
    choices = out[0].outputs
    assert [c.index for c in choices] == [0, 1, 2, 3]
    assert all(len(c.token_ids) == 6 and c.finish_reason == "length" for c in choices)
    assert len({tuple(c.token_ids) for c in choices}) == 4  # samples differ
    assert out[0].prompt_token_ids == PROMPT and out[0].finished
    # sample i draws from seed + i: it is the n=1 request with that seed, whatever the batch
    for i, c in enumerate(choices):
        alone = llm.generate(PROMPT, SamplingParams(max_tokens=6, seed=11 + i, **SAMPLE))[0].outputs[0]
        assert alone.token_ids == c.token_ids, i
    again = llm.generate(PROMPT, SamplingParams(n=4, max_tokens=6, seed=11, **SAMPLE))[0].outputs
    assert [c.token_ids for c in again] == [c.token_ids for c in choices]


def test_greedy_n_all_equal_n1(llm):
    one = llm.generate(PROMPT, SamplingParams(max_tokens=5, temperature=0, ignore_eos=True))[0].outputs[0]
    many = llm.generate([PROMPT, PROMPT[:7]], SamplingParams(n=3, max_tokens=5, temperature=0, ignore_eos=True))
    assert [c.token_ids for c in many[0].outputs] == [one.token_ids] * 3
    assert [c.text for c in many[0].outputs] == [one.text] * 3 and one.text
    assert len(many[1].outputs) == 3


def test_best_of_returns_n_best_by_cumulative_logprob(llm):
    sp = dict(max_tokens=5, seed=3, **SAMPLE)
    every = llm.generate(PROMPT, SamplingParams(n=4, logprobs=0, **sp))[0].outputs
    assert all(c.cumulative_logprob is not None for c in every)
    assert all(c.cumulative_logprob == pytest.approx(sum(lp.logprob for lp, _ in c.logprobs)) for c in every)
    best = llm.generate(PROMPT, SamplingParams(n=2, best_of=4, **sp))[0].outputs
    ranked = sorted(every, key=lambda c: -c.cumulative_logprob)[:2]
    assert [c.token_ids for c in best] == [c.token_ids for c in ranked]
    assert [c.index for c in best] == [0, 1] and best[0].cumulative_logprob >= best[1].cumulative_logprob
    assert all(c.logprobs is None for c in best)  # ranking needed logprobs; the request asked for none


def test_params_validation():
    with pytest.raises(ValueError, match="SamplingParams.n"):
        SamplingParams(n=0)
    with pytest.raises(ValueError, match="SamplingParams.best_of"):
        SamplingParams(n=3, best_of=2)
    assert SamplingParams(n=2).num_samples == 2 and SamplingParams(n=2, best_of=5).num_samples == 5
    child = SamplingParams(n=2, best_of=3, seed=7).for_sample(2)
    assert (child.n, child.best_of, child.seed, child.logprobs) == (1, None, 9, 0)


def _run_until(engine, cond, limit=50):
    outs = []
    for _ in range(limit):
        outs += engine.step()
        if cond():
            return outs
    raise AssertionError("condition not reached")


@pytest.mark.parametrize("caching", [True, False])
def test_prompt_blocks_held_once(tiny, caching):
    eng = _engine(tiny, enable_prefix_caching=caching)
    eng.add_request("r", PROMPT, SamplingParams(n=4, max_tokens=5, seed=1, **SAMPLE))
    seqs = eng._groups["r"].seqs
    assert [s.parent for s in seqs] == [None] + [seqs[0]] * 3
    _run_until(eng, lambda: all(len(s.token_ids) > len(PROMPT) for s in seqs))
    full = len(PROMPT) // 4
    used = 0
    for kind in eng.cache.kinds:
        tables = [s.blocks.tables[kind] for s in seqs]
        distinct = {b for t in tables for b in t}
        used += len(distinct)
        if caching:  # the 6 full prompt blocks are the same blocks in every sample's table
            assert all(t[:full] == tables[0][:full] for t in tables), kind
            assert len(distinct) == full + sum(len(t) - full for t in tables), kind
        else:
            assert len(distinct) == sum(len(t) for t in tables), kind
    assert eng.cache.usage()["kv_blocks_used"] == used
    if caching:
        assert used < sum(len(s.blocks.tables[k]) for s in seqs for k in eng.cache.kinds) - 3 * full
        assert eng.stats()["prefix_cache_hits"] >= 3 * full * 4
    while eng.has_unfinished():
        eng.step()
    assert eng.cache.usage()["kv_blocks_used"] == 0


def test_abort_ends_every_sample(tiny):
    eng = _engine(tiny)
    eng.add_request("r", PROMPT, SamplingParams(n=3, max_tokens=50, **SAMPLE))
    eng.add_request("other", PROMPT[:9], SamplingParams(max_tokens=4, **SAMPLE))
    _run_until(eng, lambda: all(len(s.token_ids) > len(PROMPT) + 1 for s in eng._groups["r"].seqs))
    out = eng.abort("r")
    assert out.finished and [c.finish_reason for c in out.outputs] == ["abort"] * 3
    assert [c.index for c in out.outputs] == [0, 1, 2]
    assert eng.abort("r") is None and eng.scheduler.find("r") is None and eng.scheduler.find("r#1") is None
    done = {}
    while eng.has_unfinished():
        done.update({o.request_id: o for o in eng.step() if o.finished})
    assert set(done) == {"other"} and eng.cache.usage()["kv_blocks_used"] == 0
    eng.add_request("r", PROMPT, SamplingParams(n=2, max_tokens=2))  # the id is free again
    with pytest.raises(ValueError, match="already running"):
        eng.add_request("r", PROMPT)


def test_delta_outputs_carry_only_new_tokens(tiny):
    """DELTA: every output holds one sample's new token(s), the prompt list is never copied, and
    the merged deltas equal the CUMULATIVE run."""
    prompt = "The quick brown fox"
    sp = dict(n=2, max_tokens=24, seed=5, logprobs=1, **SAMPLE)
    cum = _engine(tiny)
    cum.add_request("c", prompt, SamplingParams(**sp))
    final = None
    while cum.has_unfinished():
        final = next((o for o in cum.step() if o.finished), final)
    eng = _engine(tiny)
    eng.add_request("d", prompt, SamplingParams(output_kind=RequestOutputKind.DELTA, **sp))
    acc, prompts, sizes = OutputAccumulator(), set(), []
    while eng.has_unfinished():
        for o in eng.step():
            assert len(o.outputs) == 1
            c = o.outputs[0]
            sizes.append((len(c.token_ids), len(c.logprobs)))
            prompts.add(id(o.prompt_token_ids))
            acc.add(o)
    assert all(s == (1, 1) for s in sizes) and len(sizes) == 48
    assert len(prompts) == 1  # one prompt list for the whole request
    merged = acc.result(2)
    assert merged.finished
    for a, b in zip(merged.outputs, final.outputs):
        assert (a.index, a.text, a.token_ids, a.finish_reason) == (b.index, b.text, b.token_ids, b.finish_reason)
        assert [lp[0].token_id for lp in a.logprobs] == a.token_ids
        assert a.cumulative_logprob == pytest.approx(b.cumulative_logprob)
