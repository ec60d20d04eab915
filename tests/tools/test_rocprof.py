"""rocprofv3 / rocprof CSV parsing: the real samples in shared/data/rocprofv3 and column-drift variants."""
import csv
import json
import os
import stat

import pytest

from amd_llama4 import cli
from amd_llama4.tools import rocprof

SAMPLES = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "data", "rocprofv3"))
TRACE = os.path.join(SAMPLES, "kernel_trace.csv")
API_STATS = os.path.join(SAMPLES, "hip_api_stats.csv")


@pytest.fixture(autouse=True)
def _need_samples(ci):
    if not os.path.isdir(SAMPLES) and not ci:
        pytest.skip(f"rocprofv3 samples not found at {SAMPLES}")


# Hand-computed from the sample: End_Timestamp - Start_Timestamp of each dispatch, two per kernel.
EXPECTED_TRACE = {
    "void addition_kernel<float>(float*, float const*, float const*, int, int)":
        (2414192765369494 - 2414192765353337) + (2414192765621674 - 2414192765608844),  # 16157 + 12830
    "subtract_kernel(float*, float const*, float const*, int, int)":
        (2414192765435326 - 2414192765424862) + (2414192765669424 - 2414192765658519),
    "multiply_kernel(float*, float const*, float const*, int, int)":
        (2414192765497669 - 2414192765487486) + (2414192765726795 - 2414192765715650),
    "divide_kernel(float*, float const*, float const*, int, int)":
        (2414192765555722 - 2414192765545619) + (2414192765784969 - 2414192765773422),
}


def _check_trace(stats):
    assert {s.name: s.total_ns for s in stats} == EXPECTED_TRACE
    assert all(s.calls == 2 for s in stats)
    assert [s.total_ns for s in stats] == sorted(EXPECTED_TRACE.values(), reverse=True)
    assert stats[0].name.startswith("void addition_kernel<float>") and stats[0].total_ns == 28987
    assert stats[0].mean_ns == 28987 / 2
    assert sum(s.share for s in stats) == pytest.approx(1.0)
    assert stats[0].share == pytest.approx(28987 / sum(EXPECTED_TRACE.values()))


def test_real_kernel_trace():
    assert rocprof.kind_of(TRACE) == "trace"
    _check_trace(rocprof.parse_trace(TRACE))


def test_real_stats():
    stats = rocprof.parse_stats(API_STATS)
    assert rocprof.kind_of(API_STATS) == "stats"
    assert len(stats) == 17
    top = stats[0]
    assert (top.name, top.calls, top.total_ns, top.mean_ns) == ("hipStreamCreateWithFlags", 4, 262497406, 262497406 / 4)
    assert [s.name for s in stats[:3]] == ["hipStreamCreateWithFlags", "hipGetDeviceCount", "hipHostMalloc"]
    # scientific notation in the Percentage/StdDev columns must not break anything; tiny rows still parse
    assert {s.name: s.calls for s in stats}["__hipPopCallConfiguration"] == 16
    assert top.share == pytest.approx(262497406 / sum(s.total_ns for s in stats))


def test_folder_prefers_kernel_files_over_api_stats():
    stats, files = rocprof.summarize(SAMPLES)
    assert files == [TRACE]
    _check_trace(stats)


def _rewrite(src, dst, transform):
    with open(src, newline="") as f:
        rows = list(csv.DictReader(f))
    rows, header = transform(rows)
    with open(dst, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=header, quoting=csv.QUOTE_NONNUMERIC, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: (int(v) if isinstance(v, str) and v.isdigit() else v) for k, v in r.items()})


def test_newer_trace_columns_reordered_and_renamed(tmp_path):
    def drift(rows):
        for r in rows:
            r.pop("Private_Segment_Size")
            r.pop("Group_Segment_Size")
            r.update(LDS_Block_Size="0", Scratch_Size="0", VGPR_Count="8", Accum_VGPR_Count="0", SGPR_Count="16")
        header = list(reversed(list(rows[0])))  # different order, new columns
        return rows, header

    out = tmp_path / "run_kernel_trace.csv"
    _rewrite(TRACE, out, drift)
    assert rocprof.kind_of(str(out)) == "trace"
    _check_trace(rocprof.parse_trace(str(out)))


def test_legacy_trace_begin_end_ns(tmp_path):
    def legacy(rows):
        out = [{"Index": i, "KernelName": r["Kernel_Name"], "gpu-id": 0, "BeginNs": r["Start_Timestamp"],
                "EndNs": r["End_Timestamp"]} for i, r in enumerate(rows)]
        return out, ["Index", "KernelName", "gpu-id", "BeginNs", "EndNs"]

    out = tmp_path / "results.csv"
    _rewrite(TRACE, out, legacy)
    _check_trace(rocprof.summarize(str(tmp_path))[0])


def test_legacy_results_stats_csv(tmp_path):
    folder = tmp_path / "legacy"
    folder.mkdir()
    (folder / "results.stats.csv").write_text(
        '"Name","Calls","TotalDurationNs","AverageNs","Percentage"\n'
        '"Cijk_Ailk_Bljk_BBS_BH_MT128x128x64_MI16x16x16x1_SN_1LDSB0",10,5000000,500000,62.5\n'
        '"_fused_moe_kernel",4,2000000,500000,25.0\n'
        '"void rms_norm_kernel<__hip_bfloat16, 8>(__hip_bfloat16*, __hip_bfloat16 const*, float, int)",'
        '20,1000000,50000,12.5\n')
    stats, files = rocprof.summarize(str(folder))
    assert files == [str(folder / "results.stats.csv")]
    assert [(s.op, s.calls, s.total_ns) for s in stats] == [("gemm", 10, 5e6), ("fused_moe", 4, 2e6),
                                                            ("rms_norm", 20, 1e6)]
    assert [s.share for s in stats] == pytest.approx([0.625, 0.25, 0.125])


def test_stats_without_total_column_uses_mean_times_calls(tmp_path):
    p = tmp_path / "x_kernel_stats.csv"
    p.write_text("KernelName,Count,AverageNs\n_attn_fwd,3,100.5\n_attn_fwd,1,10\n")
    (s,) = rocprof.parse_stats(str(p))
    assert (s.name, s.calls, s.total_ns, s.op) == ("_attn_fwd", 4, 311.5, "attention")


def test_unrecognised_csv_is_a_clear_error(tmp_path):
    p = tmp_path / "other.csv"
    p.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="unrecognised columns"):
        rocprof.summarize(str(p))
    with pytest.raises(ValueError, match="no rocprof CSV"):
        rocprof.summarize(str(tmp_path))


@pytest.mark.parametrize("name,op", [
    ("Cijk_Alik_Bljk_BBS_BH_MT256x256x64_MI32x32x8x1_SN_LDSB1", "gemm"),
    ("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64", "gemm"),
    ("aten::mm", "gemm"),
    ("aten::_scaled_mm", "fp8_gemm"),
    ("_fused_moe_kernel", "fused_moe"),
    ("void moe_align_block_size_kernel<int>(int*, int*, int*, int*, int, int, int)", "moe_align_block_size"),
    ("_attn_fwd", "attention"),
    ("void paged_attention_decode_kernel<__hip_bfloat16, 128>(...)", "paged_attention_decode"),
    ("_rms_norm_kernel", "rms_norm"),
    ("void rotary_embedding_kernel<float>(...)", "apply_rope"),
    ("silu_and_mul_kernel", "silu_and_mul"),
    ("dynamic_per_token_scaled_fp8_quant_kernel", "quantize_fp8"),
    ("ncclDevKernel_AllReduce_Sum_bf16_RING_LL", "collective"),
    ("void at::native::vectorized_elementwise_kernel<4, at::native::FillFunctor<float>>", "torch_elementwise"),
    ("void addition_kernel<float>(float*, float const*, float const*, int, int)", "other"),
])
def test_op_mapping(name, op):
    assert rocprof.op_for_kernel(name) == op


def test_cli_summarize_json(capsys):
    assert cli.main(["profile", "summarize", SAMPLES, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    ks = doc["kernels"]
    assert [k["total_ns"] for k in ks] == sorted(EXPECTED_TRACE.values(), reverse=True)
    assert set(ks[0]) == {"name", "calls", "total_ns", "mean_ns", "share", "op"}
    assert ks[0]["calls"] == 2 and ks[0]["op"] == "other"


def test_cli_summarize_table(capsys):
    assert cli.main(["profile", "summarize", TRACE, "--top", "2"]) == 0
    out = capsys.readouterr().out
    assert "addition_kernel" in out and "(2 more kernels)" in out and "31.1%" in out


def _fake_tool(folder, name):
    p = folder / name
    p.write_text("#!/bin/sh\nexit 0\n")
    p.chmod(p.stat().st_mode | stat.S_IEXEC)


def test_profiler_command_prefers_rocprofv3(tmp_path, monkeypatch):
    _fake_tool(tmp_path, "rocprofv3")
    _fake_tool(tmp_path, "rocprof")
    monkeypatch.setenv("PATH", str(tmp_path))
    argv, tool = rocprof.profiler_command(["python", "x.py"], "OUT", platform_kind="rocm")
    assert tool == "rocprofv3"
    assert argv == ["rocprofv3", "--kernel-trace", "--stats", "-f", "csv", "-d", "OUT", "--", "python", "x.py"]


def test_profiler_command_legacy_rocprof_and_missing(tmp_path, monkeypatch):
    _fake_tool(tmp_path, "rocprof")
    monkeypatch.setenv("PATH", str(tmp_path))
    argv, tool = rocprof.profiler_command(["./app"], "OUT", platform_kind="rocm")
    assert tool == "rocprof" and argv == ["rocprof", "--stats", "-o", os.path.join("OUT", "results.csv"), "./app"]
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match="rocprofv3"):
        rocprof.profiler_command(["./app"], "OUT", platform_kind="rocm")
    argv, tool = rocprof.profiler_command(["x.py"], "OUT", platform_kind="cuda")
    assert tool == "torch.profiler" and argv[1:4] == ["-m", "amd_llama4.tools.rocprof", "--torch-profile"]


def test_profile_run_under_torch_profiler(tmp_path, capsys):
    script = tmp_path / "prog.py"
    script.write_text("import sys, torch\nx = torch.randn(32, 32)\nfor _ in range(3):\n    y = x @ x\n"
                      "assert sys.argv[1:] == ['--flag', 'v']\n")
    out = tmp_path / "prof"
    rc = cli.main(["profile", "--out", str(out), "--json", "--", "python", str(script), "--flag", "v"])
    assert rc == 0
    text = capsys.readouterr().out
    doc = json.loads(text[text.index("{"):])
    assert doc["files"] == [str(out / "torch_kernel_stats.csv")]
    mm = [k for k in doc["kernels"] if k["name"] == "aten::mm"]
    assert mm and mm[0]["calls"] == 3 and mm[0]["op"] == "gemm"


def test_profile_propagates_command_failure(tmp_path, capsys):
    script = tmp_path / "fail.py"
    script.write_text("import torch\ntorch.ones(2).sum()\nraise SystemExit(3)\n")
    assert cli.main(["profile", "--out", str(tmp_path / "p"), "--", str(script)]) == 3
