"""parity.py on two synthetic result files: the table, the numbers and the PNGs."""
import importlib
import json
import os

import pytest

# optional dependency: skipped when absent locally, a failure in CI (which installs it)
if os.environ.get("CI") == "true":
    importlib.import_module("matplotlib")
else:
    pytest.importorskip("matplotlib")


def _row(op, T, backend, ms, err, pct, tflops=1.0, intensity=10.0):
    shape = {"T": T, "H": 5120}
    return {"op": op, "key": f"{op}|H=5120,T={T}", "backend": backend, "shape": shape, "model": "scout", "tp": 8,
            "tokens": T, "dtype": "bf16", "status": "ok", "median_ms": ms, "min_ms": ms, "iters": 5,
            "err_vs_ref": err, "pct_of_roofline": pct, "tflops": tflops, "intensity": intensity}


def _doc(spec_key, name, rows, peaks):
    return {"schema": "amd-llama4/bench_kernels/v1", "meta": {"spec_key": spec_key, "gpu_name": name,
                                                             "torch": "2.x", "git_revision": "abc"},
            "peaks": peaks, "results": rows}


MI300X = {"device": "mi300x", "name": "MI300X", "flops_bf16": 1307e12, "flops_fp8": 2615e12,
          "bytes_per_s": 5.3e12, "source": "spec"}
H200 = {"device": "h200", "name": "H200", "flops_bf16": 989e12, "flops_fp8": 1979e12, "bytes_per_s": 4.8e12,
        "source": "spec"}


@pytest.fixture
def files(tmp_path):
    a = [_row("rms_norm", 1, "torch", 0.020, 1e-3, 10.0), _row("rms_norm", 1, "triton", 0.010, 2e-3, 20.0),
         _row("rms_norm", 16, "triton", 0.050, 2e-3, 30.0),
         _row("fused_moe", 16, "triton", 1.000, 4e-3, 60.0, tflops=200.0, intensity=300.0),
         _row("attention", 128, "torch", 0.5, 1e-3, 5.0)]  # only on A
    a.append({**_row("fused_moe", 16, "native", 0.1, 0, 0), "status": "error", "error": "boom",
              "median_ms": None})  # errors never win
    b = [_row("rms_norm", 1, "native", 0.020, 1e-3, 12.0), _row("rms_norm", 16, "native", 0.050, 1e-3, 31.0),
         _row("fused_moe", 16, "triton", 0.800, 3e-3, 70.0, tflops=250.0, intensity=300.0)]
    pa, pb = tmp_path / "a.json", tmp_path / "b.json"
    pa.write_text(json.dumps(_doc("mi300x", "AMD Instinct MI300X", a, MI300X)))
    pb.write_text(json.dumps(_doc("h200", "NVIDIA H200", b, H200)))
    sa = {"results": [{"max_concurrency": 1, "output_throughput": 100.0, "request_throughput": 1.0,
                       "mean_ttft_ms": 50.0, "p99_ttft_ms": 80.0, "mean_itl_ms": 10.0, "p99_itl_ms": 20.0}]}
    sb = {"results": [{"max_concurrency": 1, "output_throughput": 80.0, "request_throughput": 0.8,
                       "mean_ttft_ms": 40.0, "p99_ttft_ms": 80.0, "mean_itl_ms": 12.5, "p99_itl_ms": 20.0}]}
    (tmp_path / "sa.json").write_text(json.dumps(sa))
    (tmp_path / "sb.json").write_text(json.dumps(sb))
    return tmp_path


def test_parity_report(perf_module, files, capsys):
    parity = perf_module("parity")
    out = files / "report"
    rc = parity.main([str(files / "a.json"), str(files / "b.json"), "--out-dir", str(out),
                      "--serving", str(files / "sa.json"), str(files / "sb.json")])
    assert rc == 0
    md = (out / "parity.md").read_text()
    assert md in capsys.readouterr().out  # the report is also printed
    assert md.startswith("# Parity report: MI300X (A) vs H200 (B)")
    joined = json.loads((out / "parity.json").read_text())
    rows = {r["key"]: r for r in joined["per_kernel"]}
    assert set(rows) == {"rms_norm|H=5120,T=1", "rms_norm|H=5120,T=16", "fused_moe|H=5120,T=16"}
    r1 = rows["rms_norm|H=5120,T=1"]
    # best backend per side: triton 0.010 ms on A, native 0.020 ms on B -> A is 2x ahead
    assert (r1["a_backend"], r1["b_backend"], r1["speedup_a"], r1["verdict"]) == ("triton", "native", 2.0, "ahead")
    assert r1["err_delta"] == pytest.approx(1e-3)
    assert rows["rms_norm|H=5120,T=16"]["verdict"] == "par"
    moe = rows["fused_moe|H=5120,T=16"]
    assert moe["a_backend"] == "triton" and moe["speedup_a"] == pytest.approx(0.8) and moe["verdict"] == "behind"
    per_op = {s["op"]: s for s in joined["per_op"]}
    assert per_op["rms_norm"]["geomean_speedup_a"] == pytest.approx(2.0 ** 0.5)
    assert (per_op["rms_norm"]["ahead"], per_op["fused_moe"]["behind"]) == (1, 1)
    # table rows in the markdown, with each side's % of its own roofline
    assert "| rms_norm | scout tp8 T=1 | triton | 0.0100 | 20.0 | native | 0.0200 | 12.0 | 2.000 | ahead |" in md
    assert "| fused_moe | 1 | 0.800 | behind | 0 | 1 |" in md
    assert "Measured on one side only: 1 on MI300X" in md
    # end to end: throughput 100 vs 80 -> 1.25 ahead; TTFT 50 vs 40 ms -> 0.8 behind; ITL 10 vs 12.5 -> 1.25
    serving = {s["metric"]: s for s in joined["serving"]}
    assert serving["output_throughput"]["advantage_a"] == pytest.approx(1.25)
    assert serving["mean_ttft_ms"]["advantage_a"] == pytest.approx(0.8) and serving["mean_ttft_ms"]["verdict"] == "behind"
    assert serving["mean_itl_ms"]["advantage_a"] == pytest.approx(1.25)
    assert serving["p99_itl_ms"]["verdict"] == "par"
    for png in ("parity_ratio.png", "parity_roofline.png"):
        data = (out / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def test_parity_disjoint_files_fail(perf_module, tmp_path):
    parity = perf_module("parity")
    a = _doc("mi300x", "x", [_row("rms_norm", 1, "torch", 1.0, 0, 1)], MI300X)
    b = _doc("h200", "y", [_row("rms_norm", 2, "torch", 1.0, 0, 1)], H200)
    (tmp_path / "a.json").write_text(json.dumps(a))
    (tmp_path / "b.json").write_text(json.dumps(b))
    assert parity.main([str(tmp_path / "a.json"), str(tmp_path / "b.json"), "--out-dir", str(tmp_path / "o"),
                        "--no-charts"]) == 1


def test_parity_rejects_non_results(perf_module, tmp_path):
    parity = perf_module("parity")
    (tmp_path / "x.json").write_text("{}")
    with pytest.raises(ValueError, match="not a bench_kernels results file"):
        parity.load(str(tmp_path / "x.json"))
