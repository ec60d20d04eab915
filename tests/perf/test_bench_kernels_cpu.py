"""bench_kernels.py --quick on CPU writes a valid results file; the timing/roofline helpers by hand."""
import json
import os
import subprocess
import sys

import pytest
import torch

from amd_llama4.tools import bench

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


@pytest.fixture(scope="module")
def quick_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "cpu.json"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "HIP_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, "perf/bench_kernels.py", "--quick", "--device", "cpu", "--out", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(out.read_text())


@pytest.mark.slow  # ~15-30 s on 2 busy cores: a subprocess building Scout-sized expert weights
def test_quick_run_json(quick_results):
    doc = quick_results
    assert doc["schema"] == "amd-llama4/bench_kernels/v1" and doc["device"] == "cpu" and doc["complete"]
    meta = doc["meta"]
    assert meta["torch"] == torch.__version__ and meta["platform"] == "cpu" and "git_revision" in meta
    assert doc["peaks"]["source"] == "measured" and doc["peaks"]["flops_bf16"] > 1e9
    all_ops = {"rms_norm", "silu_and_mul", "apply_rope", "attention", "paged_attention", "paged_attention_decode", "moe_topk_sigmoid",
               "moe_align_block_size", "fused_moe", "fused_moe_fp8", "quantize_fp8", "gemm_bf16", "fp8_gemm"}
    seen = {r["op"] for r in doc["results"]} | {s["op"] for s in doc["skipped"]}
    assert seen == all_ops  # every op either measured or listed as skipped (not implemented yet)
    # the ops in the skeleton are always measured
    assert {"rms_norm", "attention", "fused_moe", "quantize_fp8", "gemm_bf16"} <= {r["op"] for r in doc["results"]}
    ok = [r for r in doc["results"] if r["status"] == "ok"]
    torch_rows = [r for r in doc["results"] if r["backend"] == "torch"]
    assert torch_rows and all(r["status"] == "ok" for r in torch_rows), [r.get("error") for r in torch_rows]
    for r in ok:
        assert r["median_ms"] > 0 and r["min_ms"] <= r["median_ms"] and r["iters"] >= 1
        assert r["tokens"] in (1, 4) and r["model"] == "scout"
        assert r["pct_of_roofline"] is not None and r["pct_of_roofline"] > 0
        assert r["gbps"] == pytest.approx(r["bytes"] / (r["median_ms"] / 1e3) / 1e9)
        # vs the fp32 reference: a few bf16 ulps; fp8 ops add e4m3 rounding (3 mantissa bits); never garbage
        tol = 0.1 if r["dtype"] == "fp8" else 2e-2
        assert r["err_vs_ref"] is not None and r["err_vs_ref"] < tol, (r["key"], r["backend"], r["err_vs_ref"])


@pytest.mark.slow
def test_quick_run_shapes(quick_results):
    by_op = {}
    for r in quick_results["results"]:
        by_op.setdefault(r["op"], []).append(r)
    fm = [r for r in by_op["fused_moe"] if r["backend"] == "torch"]
    # Scout tp=8: 16 experts, intermediate 8192 / 8 = 1024; flops = 6 * T * k * H * I
    assert {r["tokens"] for r in fm} == {1, 4}
    for r in fm:
        assert r["shape"] == {"T": r["tokens"], "E": 16, "k": 1, "H": 5120, "I": 1024}
        assert r["flops"] == 6.0 * r["tokens"] * 5120 * 1024
    modes = {r["shape"]["mode"] for r in by_op["attention"]}
    assert modes == {"prefill", "decode"}
    assert any(r["backend"] == "vendor:matmul" for r in by_op["gemm_bf16"])


def test_spec_key():
    assert bench.spec_key("AMD Instinct MI300X") == "mi300x"
    assert bench.spec_key("AMD Instinct MI325X OAM") == "mi325x"
    assert bench.spec_key("NVIDIA H200") == "h200"
    assert bench.spec_key("NVIDIA H100 80GB HBM3") == "h100"
    assert bench.spec_key("Radeon RX 7900") is None


def test_roofline_by_hand():
    peaks = bench.spec_peaks("mi300x")  # 1307 TFLOP/s bf16, 2615 fp8, 5.3 TB/s
    # 1 GFLOP and 1 GB in 1 ms: 1 TFLOP/s, 1000 GB/s; memory time 1e9/5.3e12 s = 0.1887 ms -> 18.87 %
    r = bench.roofline(1e9, 1e9, 1.0, peaks, "bf16")
    assert r["tflops"] == pytest.approx(1.0) and r["gbps"] == pytest.approx(1000.0)
    assert r["bound"] == "memory" and r["pct_of_roofline"] == pytest.approx(100 * 1e9 / 5.3e12 / 1e-3)
    assert r["pct_peak_flops"] == pytest.approx(100 / 1307)
    # compute-bound at high intensity; fp8 uses the fp8 peak
    r = bench.roofline(2.615e12, 1e6, 2.0, peaks, "fp8")
    assert r["bound"] == "compute" and r["pct_of_roofline"] == pytest.approx(50.0)
    assert bench.roofline(1.0, 1.0, 1.0, None)["pct_of_roofline"] is None


def test_time_fn_cpu_counts_iterations():
    calls = []
    times = bench.time_fn(lambda: calls.append(1), "cpu", warmup=2, iters=7)
    assert len(times) == 7 and len(calls) == 9 and all(t >= 0 for t in times)
