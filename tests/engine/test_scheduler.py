"""Mixed steps (vLLM V1-style chunked prefill): every running decode is in every step beside the
prefill pieces, the token budget counts real tokens, pieces never span two attention chunks
(checked by every simulated step), preemption of the youngest, and requests that can never fit."""
from tests.engine.prefix_sched_helpers import add, make_sched, run, step, tokens


def _decoding(sched):
    return [s for s in sched.running if s.pending == 1]


def test_decodes_share_every_step_with_a_long_prefill():
    sched = make_sched({"global": 512, "chunked": 64}, max_tokens=64)
    shorts = [add(sched, tokens(6, seed=i), max_new=200) for i in range(4)]
    while len(_decoding(sched)) < 4:
        step(sched)
    long = add(sched, tokens(1000, seed=9), max_new=2)
    prefill_steps = 0
    while long.num_computed < long.num_prompt:
        st = step(sched)
        got = dict(zip((s.request_id for s in st.seqs), st.num_tokens))
        assert sum(st.num_tokens) <= 64  # real tokens only
        assert all(got.get(s.request_id) == 1 for s in shorts), got  # every decode, every step
        assert long.request_id in got and st.is_prefill
        prefill_steps += 1
    # 1000 tokens at <= 60 per step beside the 4 decodes (pieces also stop at chunk ends)
    assert 17 <= prefill_steps <= 1000 // 32 + 2
    run(sched)


def test_budget_fills_with_running_pieces_then_waiting_fifo():
    sched = make_sched({"global": 512, "chunked": 64}, max_tokens=40)
    a = add(sched, tokens(50, seed=1), max_new=3)
    b = add(sched, tokens(20, seed=2), max_new=3)
    c = add(sched, tokens(20, seed=3), max_new=3)
    st = step(sched)
    assert st.seqs == [a, b] and st.num_tokens == [32, 8]  # a stops at its chunk end; b gets the rest
    st = step(sched)
    assert st.seqs == [a, b, c] and st.num_tokens == [18, 12, 10]  # running pieces first, then c
    st = step(sched)  # a and b decode; c continues
    assert st.seqs == [a, b, c] and st.num_tokens == [1, 1, 10] and st.is_prefill
    st = step(sched)
    assert st.num_tokens == [1, 1, 1] and not st.is_prefill
    run(sched)


def test_max_num_seqs_bounds_the_running_set():
    sched = make_sched({"global": 512, "chunked": 64}, max_num_seqs=2)
    seqs = [add(sched, tokens(5, seed=i), max_new=4) for i in range(5)]
    widths = []
    run(sched, on_step=lambda st: widths.append(len(st.seqs)))
    assert max(widths) == 2 and all(s.finished for s in seqs)


def test_preempts_youngest_and_admits_nothing_that_step():
    sched = make_sched({"global": 9, "chunked": 16}, max_tokens=64)  # 72 global slots
    a = add(sched, tokens(30, seed=1), max_new=30)
    b = add(sched, tokens(30, seed=2), max_new=30)
    preempting = []

    def check(st):
        if b.num_preemptions and not preempting:
            preempting.append(st)
            assert b not in st.seqs and a in st.seqs  # the youngest goes, the oldest keeps decoding

    run(sched, on_step=check)
    assert preempting and a.num_preemptions == 0 and b.finished
    assert sched.cache.usage()["kv_blocks_used"] == 0


def test_request_that_can_never_fit_fails_and_others_run():
    sched = make_sched({"global": 4, "chunked": 16})  # 32 global slots
    big = add(sched, tokens(40), max_new=2)
    small = add(sched, tokens(5), max_new=2)
    failed = []
    run(sched, on_step=lambda st: failed.extend(st.failed))
    assert [s for s, _ in failed] == [big] and "KV cache" in failed[0][1] and big.finished
    assert small.finished and len(small.token_ids) == 7


def test_decoding_sequence_outgrowing_the_cache_fails():
    sched = make_sched({"global": 3, "chunked": 16})  # 24 global slots
    seq = add(sched, tokens(10), max_new=100)
    failed = []
    run(sched, on_step=lambda st: failed.extend(st.failed))
    assert [s for s, _ in failed] == [seq] and "needs more KV cache blocks" in failed[0][1]
    assert sched.cache.usage()["kv_blocks_used"] == 0
