"""Engine behaviour: chunk-bounded KV blocks, preemption, abort, continuous batching, seeds, stops."""
import math

import pytest
import torch

from amd_llama4 import LLM, SamplingParams, load_model
from amd_llama4.engine.llm_engine import EngineArgs, LLMEngine

GREEDY = dict(temperature=0, ignore_eos=True)


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny-scout")  # chunk 32, 4 layers (3 chunked + 1 global)


def _engine(model, **kw):
    return LLMEngine(EngineArgs(model="tiny-scout", **kw), model=model)


def _run(engine, on_step=None):
    final, step = {}, 0
    while engine.has_unfinished():
        for o in engine.step():
            if o.finished:
                final[o.request_id] = o
        step += 1
        if on_step:
            on_step(step)
    return final


def test_chunked_blocks_bounded_global_blocks_grow(tiny):
    eng = _engine(tiny, block_size=5, max_num_batched_tokens=16, max_num_seqs=16)
    chunk, bs = tiny.config.attention_chunk_size, 5
    eng.add_request("a", list(range(5, 45)), SamplingParams(max_tokens=70, **GREEDY))
    seq = eng.scheduler.find("a")
    seen = []

    def check(_):
        if seq.blocks.tables["global"]:
            n_chunked, n_global = len(seq.blocks.tables["chunked"]), len(seq.blocks.tables["global"])
            assert n_chunked <= math.ceil(chunk / bs) + 1
            assert n_global == math.ceil(seq.num_computed / bs)
            seen.append((seq.num_computed, n_chunked, n_global))

    _run(eng, check)
    assert seen[-1][0] >= 100 and seen[-1][2] >= 20  # global table grew with the context ...
    assert max(c for _, c, _ in seen) <= math.ceil(chunk / bs)  # ... chunked never beyond one chunk
    assert any(c < math.ceil(chunk / bs) for n, c, _ in seen if n > chunk)  # and was released at boundaries
    assert eng.stats()["kv_blocks_used"] == 0


def test_preemption_recomputes_same_tokens(tiny):
    prompts = [list(range(3 + i, 30 + i)) for i in range(4)]
    sp = SamplingParams(max_tokens=40, **GREEDY)
    roomy = _engine(tiny, block_size=4)
    for i, p in enumerate(prompts):
        roomy.add_request(str(i), p, sp)
    want = _run(roomy)
    tight = _engine(tiny, block_size=4, num_kv_blocks=40)  # global layer alone needs 17 blocks per sequence
    for i, p in enumerate(prompts):
        tight.add_request(str(i), p, sp)
    got = _run(tight)
    assert sum(s.num_preemptions for s in [*tight.scheduler.running]) == 0
    for i in range(4):
        assert got[str(i)].outputs[0].token_ids == want[str(i)].outputs[0].token_ids
    assert tight.stats()["kv_blocks_used"] == 0


def test_preemption_happens(tiny):
    eng = _engine(tiny, block_size=4, num_kv_blocks=40)
    seqs = []
    for i in range(4):
        eng.add_request(str(i), list(range(3, 30)), SamplingParams(max_tokens=40, **GREEDY))
        seqs.append(eng.scheduler.find(str(i)))
    _run(eng)
    assert sum(s.num_preemptions for s in seqs) > 0


def test_request_too_big_for_cache_fails_cleanly(tiny):
    eng = _engine(tiny, block_size=4, num_kv_blocks=6)
    eng.add_request("big", list(range(3, 60)), SamplingParams(max_tokens=5, **GREEDY))
    out = _run(eng)["big"]
    assert out.outputs[0].finish_reason == "error" and "KV cache" in out.error
    assert eng.stats()["kv_blocks_used"] == 0


def test_abort_frees_blocks_midway(tiny):
    eng = _engine(tiny, block_size=4)
    eng.add_request("a", list(range(3, 40)), SamplingParams(max_tokens=50, **GREEDY))
    eng.add_request("b", list(range(3, 20)), SamplingParams(max_tokens=50, **GREEDY))
    for _ in range(4):
        eng.step()
    assert eng.stats()["kv_blocks_used"] > 0
    out = eng.abort("a")
    assert out.outputs[0].finish_reason == "abort" and out.finished
    assert eng.abort("a") is None
    final = _run(eng)
    assert set(final) == {"b"} and eng.stats()["kv_blocks_used"] == 0


def test_continuous_batching_request_joins_mid_run(tiny):
    sp = SamplingParams(max_tokens=30, **GREEDY)
    alone = _engine(tiny, block_size=4)
    alone.add_request("late", list(range(7, 19)), sp)
    want = _run(alone)["late"].outputs[0].token_ids
    eng = _engine(tiny, block_size=4)
    eng.add_request("early", list(range(3, 25)), sp)
    batch_sizes = []

    def join(step):
        if step == 5:
            eng.add_request("late", list(range(7, 19)), sp)
        batch_sizes.append(len(eng.scheduler.running))

    final = _run(eng, join)
    assert max(batch_sizes) == 2  # ran together
    assert final["late"].outputs[0].token_ids == want


def test_seeded_sampling_reproducible_across_batches(tiny):
    llm = LLM("tiny-scout")
    sp = SamplingParams(temperature=1.0, top_p=0.9, max_tokens=20, seed=1234, ignore_eos=True)
    a = llm.generate(["Hello there"], sp)[0].outputs[0].token_ids
    b = llm.generate(["Other prompt", "Hello there", "x"], [SamplingParams(temperature=1.0, max_tokens=7), sp,
                                                          SamplingParams(temperature=0.7, max_tokens=25)])
    assert b[1].outputs[0].token_ids == a
    c = llm.generate(["Hello there"], SamplingParams(temperature=1.0, top_p=0.9, max_tokens=20, seed=99,
                                                     ignore_eos=True))[0]
    assert c.outputs[0].token_ids != a


def test_stop_string_cut_exactly(tiny):
    llm = LLM("tiny-scout")
    free = llm.generate(["Once upon a time"], SamplingParams(temperature=0, max_tokens=30, ignore_eos=True))[0]
    text = free.outputs[0].text
    assert len(text) > 6
    stop = text[3:6]
    cut = llm.generate(["Once upon a time"], SamplingParams(temperature=0, max_tokens=30, ignore_eos=True,
                                                            stop=[stop]))[0].outputs[0]
    assert cut.finish_reason == "stop" and cut.stop_reason == stop
    assert cut.text == text[: text.index(stop)]


def test_stop_token_ids_and_max_model_len(tiny):
    llm = LLM("tiny-scout", max_model_len=40)
    free = llm.generate([[1, 50, 60]], SamplingParams(temperature=0, max_tokens=20, ignore_eos=True))[0]
    stop_id = free.outputs[0].token_ids[4]
    out = llm.generate([[1, 50, 60]], SamplingParams(temperature=0, max_tokens=20, ignore_eos=True,
                                                     stop_token_ids=[stop_id]))[0].outputs[0]
    assert out.token_ids[-1] == stop_id and out.finish_reason == "stop" and out.stop_reason == stop_id
    longest = llm.generate([[1] * 30], SamplingParams(temperature=0, max_tokens=100, ignore_eos=True))[0]
    assert longest.outputs[0].finish_reason == "length" and len(longest.outputs[0].token_ids) == 10
    with pytest.raises(ValueError, match="max_model_len is 40"):
        llm.generate([[1] * 40])
    with pytest.raises(ValueError, match=r"token ids must be"):
        llm.generate([[1, 10 ** 6]])


def test_fp8_kv_cache_agrees_with_auto(tiny):
    """Next token after prompts prefilled in 8-token pieces, so most keys are read back from the cache.
    (Random tiny models have flat logits, so long greedy runs are a poor accuracy metric; the FP8 issue
    measures agreement and KL properly.)"""
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(5, 500, (int(n),), generator=g).tolist() for n in torch.randint(9, 90, (24,), generator=g)]
    sp = SamplingParams(temperature=0, max_tokens=1, ignore_eos=True)
    ref = _engine_generate(_engine(tiny, max_num_batched_tokens=8, max_num_seqs=8), prompts, sp)
    eng = _engine(tiny, max_num_batched_tokens=8, max_num_seqs=8, kv_cache_dtype="fp8")
    assert eng.cache.k["global"].dtype in (torch.float8_e4m3fn, torch.float8_e4m3fnuz)
    got = _engine_generate(eng, prompts, sp)
    agree = sum(a == b for a, b in zip(ref, got)) / len(prompts)
    assert agree >= 0.9, f"fp8 KV next-token agreement {agree:.2f}"


def _engine_generate(eng, prompts, sp):
    for i, p in enumerate(prompts):
        eng.add_request(str(i), p, sp)
    final = _run(eng)
    return [final[str(i)].outputs[0].token_ids[0] for i in range(len(prompts))]


def test_step_budget_below_max_num_seqs_is_refused():
    """Every running decode needs one token of the step budget (vLLM's rule), else the youngest starve."""
    with pytest.raises(ValueError, match="max_num_batched_tokens 8 is smaller than max_num_seqs 64"):
        EngineArgs(model="tiny-scout", max_num_batched_tokens=8)
    from amd_llama4.engine.memory import batched_tokens

    assert batched_tokens(EngineArgs(model="tiny-scout", max_num_seqs=4096)) == 4096  # the default grows with it
