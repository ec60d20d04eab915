"""The per-step host shortcuts give exactly what the general code gives: the sampler's argmax-only
path (every row greedy with nothing editing its logits) against the full pipeline, when it must not
be taken, and BlockManager.covers (the scheduler skips reservation) against reserve's effect."""
import random

import pytest
import torch

from amd_llama4.config import preset
from amd_llama4.engine.block_manager import BlockManager, SeqBlocks
from amd_llama4.engine.sampler import Sampler, SamplingState
from amd_llama4.engine.sampling_params import SamplingParams as SP

EOS = [2, 3]


def _state(**kw) -> SamplingState:
    return SamplingState(SP(**kw), [5, 6], EOS)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_argmax_only_matches_the_full_pipeline(dtype, monkeypatch):
    g = torch.Generator().manual_seed(7)
    logits = (torch.randn(9, 131, generator=g) * 3).to(dtype)
    logits[1] = 0.5  # every id tied: lowest id
    logits[4, [3, 77, 100]] = 50.0  # ties on the maximum
    logits[6, 12] = float("nan")  # argmax returns a NaN's id, on both paths
    before = logits.clone()
    states = [_state(temperature=t) for t in (0.0, 1e-6, 0.0, 0.0, 0.0, 1e-7, 0.0, 0.0, 0.0)]
    assert all(s.argmax_only for s in states)
    fast = Sampler()(logits, states)
    monkeypatch.setattr(SamplingState, "argmax_only", property(lambda s: False))
    full = Sampler()(logits, states)
    assert [r.token_id for r in fast] == [r.token_id for r in full]
    assert [r.token_id for r in fast][1] == 0 and [r.token_id for r in fast][4] == 3
    assert all(r.logprob is None and r.top_logprobs is None for r in fast)
    torch.testing.assert_close(logits, before, rtol=0, atol=0, equal_nan=True)  # the caller's logits untouched


@pytest.mark.parametrize("kw", [dict(temperature=0.5, seed=1), dict(temperature=0.0, logprobs=2),
                                dict(temperature=0.0, logit_bias={9: 100.0}),
                                dict(temperature=0.0, repetition_penalty=1.5),
                                dict(temperature=0.0, presence_penalty=0.5)])
def test_rows_that_edit_logits_take_the_full_pipeline(kw):
    logits = torch.zeros(2, 16)
    logits[:, 5] = 2.0  # 5 wins unless a step of the pipeline changes the row
    states = [_state(temperature=0.0), _state(**kw)]
    assert states[0].argmax_only and not states[1].argmax_only
    out = Sampler()(logits, states)
    assert out[0].token_id == 5
    if "logit_bias" in kw:
        assert out[1].token_id == 9
    if "logprobs" in kw:
        assert len(out[1].top_logprobs) == 2 and out[1].logprob is not None


def test_min_tokens_suppression_is_not_skipped():
    """Until min_tokens ids were generated eos is -inf even when every row is greedy."""
    st = _state(temperature=0.0, min_tokens=2)
    logits = torch.zeros(1, 8)
    logits[0, 2] = 9.0  # eos wins the raw argmax
    got = []
    for _ in range(3):
        assert st.argmax_only == (len(st.output_token_ids) >= 2)
        tok = Sampler()(logits, [st])[0].token_id
        st.append(tok)
        got.append(tok)
    assert got[:2] != [2, 2] and 2 not in got[:2] and got[2] == 2


def test_a_grammar_matcher_turns_the_shortcut_off():
    st = _state(temperature=0.0)
    st.matcher = object()  # the engine attaches a matcher after construction
    assert not st.argmax_only


def test_covers_means_reserve_changes_nothing():
    rnd = random.Random(0)
    for chunk, bs in ((8, 3), (32, 4), (12, 5)):
        cfg = preset("tiny-scout", attention_chunk_size=chunk)  # both pools
        bm = BlockManager(cfg, 10_000, bs)
        for _ in range(300):
            seq = SeqBlocks()
            done = rnd.randint(0, 60)
            p = 0
            while p < done:  # reserve [0, done) piecewise within chunks, as the scheduler does
                stop = min(done, p + rnd.randint(1, 7), (p // chunk + 1) * chunk)
                bm.reserve(seq, p, stop)
                p = stop
            start = rnd.randint(max(0, done - 6), done + 3)
            end = start + rnd.randint(1, 4)
            got = bm.covers(seq, start, end)
            snapshot = ({k: list(v) for k, v in seq.tables.items()}, seq.chunk_start,
                        {k: a.num_free for k, a in bm.allocators.items()})
            try:
                bm.reserve(seq, start, end)
                unchanged = snapshot == ({k: list(v) for k, v in seq.tables.items()}, seq.chunk_start,
                                         {k: a.num_free for k, a in bm.allocators.items()})
            except ValueError:  # spans two chunks: covers must say no
                unchanged = False
            assert got == unchanged, (chunk, bs, done, start, end, got)
            bm.release(seq)
