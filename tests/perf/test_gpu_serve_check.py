"""perf/gpu_serve_check.py (the serve-and-compare step of perf/gpu_check.sh) on CPU at tiny-scout
size, so the GPU check cannot rot on machines without a GPU."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

SCRIPT = os.path.join(os.path.dirname(__file__), "..", "..", "perf", "gpu_serve_check.py")


def test_serve_check_tiny_cpu(tmp_path):
    pytest.importorskip("openai")
    pytest.importorskip("uvicorn")
    cmd = [sys.executable, SCRIPT, "--out", str(tmp_path), "--shape", "tiny", "--device", "cpu",
           "--dtype", "float32", "--max-tokens", "6"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=150,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    res = json.loads((tmp_path / "serve_check.json").read_text())
    assert proc.returncode == 0 and res["ok"], (proc.stdout[-2000:], proc.stderr[-3000:], res)
    assert set(res["modes"]) == {"graphs", "eager"} and res["graphs_equal_eager"] is True
    for mode in res["modes"].values():
        # fp32 server vs fp32 reference: every token equal, no near-tie allowance used
        assert [(c["matched"], c["of"], c["ok"]) for c in mode["compare"]] == [(6, 6, True)] * 3
        assert all(len(p["tokens"]) == 6 and p["text"] for p in mode["prompts"]) and mode["chat"]
    assert "PASS" in (tmp_path / "serve_check.md").read_text()
    assert not any(p.suffix == ".safetensors" for p in tmp_path.rglob("*")), "checkpoint not cleaned up"


def _ref(tokens, tops):
    return {"text": "".join(tokens), "tokens": tokens, "top": tops}


def test_compare_accepts_near_ties_only(perf_module):
    g = perf_module("gpu_serve_check")
    ref = [_ref(["a", "b", "c"], [{"a": -0.1}, {"b": -1.0, "x": -1.1, "y": -3.0}, {"c": -0.5}])]
    same = g.compare(ref, [{"tokens": ["a", "b", "c"]}], tol=0.3)
    assert same == [{"matched": 3, "of": 3, "ok": True}]
    tie = g.compare(ref, [{"tokens": ["a", "x", "q"]}], tol=0.3)[0]
    assert tie["ok"] and tie["matched"] == 1 and tie["gap"] == pytest.approx(0.1)
    far = g.compare(ref, [{"tokens": ["a", "y", "c"]}], tol=0.3)[0]
    assert not far["ok"] and far["gap"] == pytest.approx(2.0) and "token 1" in far["why"]
    absent = g.compare(ref, [{"tokens": ["z", "b", "c"]}], tol=0.3)[0]
    assert not absent["ok"] and absent["gap"] is None and "top-5" in absent["why"]
    short = g.compare(ref, [{"tokens": ["a", "b"]}], tol=0.3)[0]
    assert not short["ok"] and short["matched"] == 2
    with pytest.raises(ValueError):  # one result per prompt, or the comparison is meaningless
        g.compare(ref, [], tol=0.3)


def test_scout_shaped_config(perf_module):
    g = perf_module("gpu_serve_check")
    cfg = g.make_config("scout", 3, None)
    assert (cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.num_local_experts,
            cfg.intermediate_size, cfg.vocab_size) == (5120, 40, 8, 16, 8192, 202048)
    assert [cfg.uses_rope(i) for i in range(3)] == [True, True, False]  # last layer: global NoPE
    with pytest.raises(ValueError, match="--layers 1"):
        g.make_config("scout", 1, None)
    with pytest.raises(ValueError, match="--vocab 100"):
        g.make_config("tiny", 2, 100)
