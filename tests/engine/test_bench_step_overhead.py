"""perf/bench_step_overhead.py runs the real engine loop around its stand-in forward on both of
the runner's decode branches, checks every token came from the stand-in, and reports each phase."""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "perf"))
import bench_step_overhead  # noqa: E402


@pytest.mark.parametrize("path", ["native", "eager"])
def test_bench_reports_decode_steps_and_phases(path, capsys):
    res = bench_step_overhead.main(["--batches", "1,3", "--prompt-len", "5", "--new-tokens", "6", "--repeats", "1",
                                    "--path", path])
    assert [r["batch"] for r in res] == [1, 3]
    for r in res:
        assert r["decode_steps"] == 5  # the first token comes from the prefill step
        assert set(r["split_ms"]) == set(bench_step_overhead.PHASES)
        assert r["step_ms"] > 0 and all(v >= 0 for k, v in r["split_ms"].items() if k != "other")
    assert f"{path} decode branch" in capsys.readouterr().out


def test_bench_notices_when_the_model_ran_instead_of_the_stand_in():
    llm = bench_step_overhead.build_llm(2, 16, 8)
    llm.engine.model.init_random(seed=1, std=0.5)
    timer, record = bench_step_overhead._Timer(), []
    bench_step_overhead.instrument(llm, timer, record)  # no stand-in: the real (tiny) model decodes
    with pytest.raises(RuntimeError, match="request 0: tokens .* are not the stand-in's 99 x 4"):
        bench_step_overhead.run_batch(llm, 1, 5, 4, record, [99])
