"""perf/bench_structured.py runs end to end (small sizes) and reports both sides per batch size."""
import importlib.util
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "perf" / "bench_structured.py"


def test_bench_structured_smoke(tmp_path):
    spec = importlib.util.spec_from_file_location("bench_structured", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = mod.main(["--batches", "1,5", "--vocab", "1000", "--steps", "4", "--device", "cpu",
                    "--json", str(tmp_path / "r.json")])
    assert [r["batch"] for r in out["rows"]] == [1, 5]
    for r in out["rows"]:
        assert r["free_ms"] > 0 and r["constrained_ms"] > 0
        assert r["ratio"] == pytest.approx(r["constrained_ms"] / r["free_ms"])
    assert (tmp_path / "r.json").exists()
