"""bench_serving's long-prompt mix: which requests are long, and the ITL of the other streams
while a long prompt is prefilled, against the median ITL (issue 14: p99 <= 3x median)."""
import importlib
import os

import pytest

from tests.perf.test_bench_serving import _run, server  # noqa: F401 - the fake server fixture

if os.environ.get("CI") == "true":
    importlib.import_module("httpx")
else:
    pytest.importorskip("httpx")


def _res(bs, long, t_send, times):
    return bs.RequestResult(ok=True, long=long, t_send=t_send, ttft_s=times[0] - t_send, token_t=list(times),
                            itl_s=[b - a for a, b in zip(times, times[1:])], latency_s=times[-1] - t_send,
                            output_tokens=len(times))


def test_long_indices_and_prompt_lengths(perf_module):
    bs = perf_module("bench_serving")
    idx = bs.long_indices(10, 3)
    assert idx == {0, 3, 6} and bs.long_indices(5, 0) == frozenset() and bs.long_indices(4, 4) == {0, 1, 2, 3}
    prompts = bs.make_prompts(10, 5, 0, idx, 50)
    assert [len(p.split()) - 2 for p in prompts] == [50 if i in idx else 5 for i in range(10)]


def test_itl_during_long_prefill_only_counts_overlapping_gaps(perf_module):
    bs = perf_module("bench_serving")
    long = _res(bs, True, 10.0, [10.5, 10.51])  # prefilled during [10.0, 10.5]
    # a short stream: 10 ms gaps, then stalls while the long prompt is prefilled, then 10 ms again
    short = _res(bs, False, 9.0, [9.01, 9.02, 9.03, 10.1, 10.4, 10.6, 10.61, 10.62])
    itl = [x * 1e3 for r in (long, short) for x in r.itl_s]
    m = bs.long_prefill_itl([long, short], itl, [50, 99])
    assert m["num_long_prompts"] == 1
    # the gaps overlapping (10.0, 10.5): 9.03->10.1 (starts before), 10.1->10.4, 10.4->10.6 (ends after)
    assert m["num_itl_during_long_prefill"] == 3
    assert m["p99_itl_during_long_prefill_ms"] == pytest.approx(bs.percentile([1070, 300, 200], 99))
    assert m["itl_p99_during_long_prefill_over_median"] == pytest.approx(
        m["p99_itl_during_long_prefill_ms"] / bs.statistics.median(itl))


def test_sweep_reports_the_mix(perf_module, tmp_path, server):  # noqa: F811
    srv, url = server
    rc, doc = _run(perf_module, tmp_path, url, "--model", "m", "--num-prompts", "6", "--max-tokens", "6",
                   "--concurrency", "6", "--input-len", "4", "--long-prompts", "2", "--long-input-len", "40")
    r = doc["results"][0]
    assert rc == 0 and r["num_long_prompts"] == 2 and r["completed"] == 6
    assert sorted(len(q["prompt"].split()) for q in srv.requests) == [6] * 4 + [42] * 2
    assert "itl_p99_during_long_prefill_over_median" in r and "p99_itl_during_long_prefill_ms" in r
    _, plain = _run(perf_module, tmp_path, url, "--model", "m", "--num-prompts", "2", "--max-tokens", "2",
                    "--concurrency", "2")
    assert "num_long_prompts" not in plain["results"][0]  # no mix, no mix keys
    with pytest.raises(SystemExit):
        _run(perf_module, tmp_path, url, "--model", "m", "--num-prompts", "2", "--long-prompts", "3")
