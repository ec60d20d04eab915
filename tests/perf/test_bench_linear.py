"""perf/bench_linear.py runs end to end on tiny shapes and reports one row per (rows, shape)."""
import pytest

from amd_llama4.ops import native


@pytest.mark.skipif(not native.available(), reason="needs amd_llama4._C")
def test_bench_linear_smoke(perf_module):
    rows = perf_module("bench_linear").main(["--rows", "1,3", "--shapes", "64x40,33x7", "--pool-mb", "1",
                                             "--iters", "3"])
    assert [(r["rows"], r["K"], r["N"]) for r in rows] == [(1, 64, 40), (3, 64, 40), (1, 33, 7), (3, 33, 7)]
    assert all(r["native_ms"] > 0 and r["torch_ms"] > 0 for r in rows)
