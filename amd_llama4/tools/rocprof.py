"""Run a command under a profiler and summarise its kernels.

ROCm: `rocprofv3 --kernel-trace --stats -f csv` (legacy `rocprof --stats` when that is what is
installed). Elsewhere: torch.profiler, run in-process on a Python script, written out in the
same stats CSV layout so that one parser reads everything.

The parser keys on column names, never positions, and accepts the aliases seen across
rocprofiler-sdk releases and the legacy tool:
  - kernel trace (one row per dispatch): Kernel_Name + Start_Timestamp/End_Timestamp (ns),
    or legacy KernelName + BeginNs/EndNs (or DurationNs);
  - stats (one row per kernel): Name, Calls, TotalDurationNs, AverageNs, Percentage
    (`*_kernel_stats.csv`, legacy `results.stats.csv`).
"""
from __future__ import annotations

import csv
import glob
import os
import re
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass


@dataclass
class KernelStat:
    name: str
    calls: int
    total_ns: float
    mean_ns: float
    share: float  # fraction of the total kernel time, 0..1
    op: str

    def as_dict(self) -> dict:
        return asdict(self)


# -- column names ------------------------------------------------------------------------------------

def _norm(col: str) -> str:
    """'Kernel_Name' / 'KernelName' / 'kernel-name' -> 'kernelname'; '(ns)' style units dropped."""
    return re.sub(r"[^a-z0-9]", "", col.lower().replace("(ns)", "ns"))


ALIASES = {
    "name": ("kernelname", "name", "kernel", "functionname", "function", "kernelnameshort"),
    "start": ("starttimestamp", "beginns", "startns", "start", "begin", "begintimestamp"),
    "end": ("endtimestamp", "endns", "end", "stop", "endtime"),
    "duration": ("durationns", "duration", "durationnsec"),
    "calls": ("calls", "count", "numcalls", "callcount"),
    "total": ("totaldurationns", "totalduration", "totalns", "totaltimens", "totaltime", "sumns"),
    "mean": ("averagens", "avgns", "meanns", "average", "mean", "averagedurationns"),
    "pct": ("percentage", "percent", "pct", "timepercent"),
}


def _columns(header: list[str]) -> dict[str, str]:
    """role -> the real column name for every role this header has."""
    normed = {_norm(h): h for h in header}
    found = {}
    for role, names in ALIASES.items():
        for n in names:
            if n in normed:
                found[role] = normed[n]
                break
    return found


def _num(v: str | None) -> float | None:
    if v is None or v.strip() == "":
        return None
    try:
        return float(v)
    except ValueError:
        return None


# -- kernel name -> our op -----------------------------------------------------------------------------

OP_PATTERNS: list[tuple[str, str]] = [
    # order matters: first match wins (specific before generic)
    (r"moe_align|align_block|count_and_sort|sort_expert", "moe_align_block_size"),
    (r"topk.*(sigmoid|gating|softmax)|(sigmoid|gating).*topk|moe_topk|topkgating", "moe_topk_sigmoid"),
    (r"fused_moe|moe_gemm|moe_mlp|grouped_gemm|fmoe|ck_moe|expert", "fused_moe"),
    (r"paged_attention|paged_attn|decode_attention|pa_fwd|flash_decod", "paged_attention_decode"),
    (r"attention|attn|fmha|flash|sdpa|mha_fwd|softmax_fwd", "attention"),
    (r"rms_?norm|layer_?norm|layernorm", "rms_norm"),
    (r"rope|rotary", "apply_rope"),
    (r"silu|swiglu|act_and_mul|gelu_and_mul", "silu_and_mul"),
    (r"quant.*fp8|fp8.*quant|scaled_fp8|per_token_quant|dynamic_.*quant|quantize", "quantize_fp8"),
    (r"scaled_mm|fp8_gemm|f8f8|fp8.*gemm|gemm.*fp8", "fp8_gemm"),
    (r"aten::(mm|bmm|addmm|matmul|linear)$", "gemm"),
    (r"nccl|rccl|all_?reduce|allgather|all_gather|reduce_scatter|cross_device", "collective"),
    (r"^cijk_|gemm|gemv|hipblaslt|cublas|matmul|_mm_|wvsplitk|xmma|cutlass|nvjet|sm\d+_.*(tensorop|gmma)|ampere_|"
     r"splitk|mfma", "gemm"),
    (r"elementwise|vectorized_|unrolled_elementwise|reduce_kernel|fill|copy|cat_|index|scatter|gather|"
     r"sort|softmax|arange|where", "torch_elementwise"),
]
_OP_RES = [(re.compile(p, re.IGNORECASE), op) for p, op in OP_PATTERNS]


def op_for_kernel(name: str) -> str:
    """Our op name for a kernel name (Triton, HIP, CK, hipBLASLt, cuBLAS, torch); 'other' if unknown."""
    for rx, op in _OP_RES:
        if rx.search(name):
            return op
    return "other"


# -- parsing -----------------------------------------------------------------------------------------

def _read_rows(path: str) -> tuple[list[str], list[dict]]:
    with open(path, newline="", encoding="utf-8", errors="replace") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


def kind_of(path: str) -> str:
    """'trace' | 'stats' | 'unknown' from the header alone."""
    with open(path, newline="", encoding="utf-8", errors="replace") as f:
        header = next(csv.reader(f), [])
    cols = _columns(header)
    if "name" in cols and ("total" in cols or ("calls" in cols and "mean" in cols)):
        return "stats"
    if "name" in cols and (("start" in cols and "end" in cols) or "duration" in cols):
        return "trace"
    return "unknown"


def parse_stats(path: str) -> list[KernelStat]:
    header, rows = _read_rows(path)
    cols = _columns(header)
    if "name" not in cols or not ({"total", "mean"} & set(cols)):
        raise ValueError(f"{path}: not a stats CSV (columns {header}); need Name and TotalDurationNs/AverageNs")
    agg: dict[str, list[float]] = {}
    for r in rows:
        name = (r.get(cols["name"]) or "").strip()
        if not name:
            continue
        calls = _num(r.get(cols["calls"])) if "calls" in cols else None
        total = _num(r.get(cols["total"])) if "total" in cols else None
        mean = _num(r.get(cols["mean"])) if "mean" in cols else None
        calls = int(calls) if calls is not None else 1
        if total is None:
            total = (mean or 0.0) * calls
        a = agg.setdefault(name, [0, 0.0])
        a[0] += calls
        a[1] += total
    return _finish(agg)


def parse_trace(path: str) -> list[KernelStat]:
    header, rows = _read_rows(path)
    cols = _columns(header)
    if "name" not in cols or not ({"start", "end"} <= set(cols) or "duration" in cols):
        raise ValueError(f"{path}: not a kernel-trace CSV (columns {header}); need Kernel_Name and "
                         "Start_Timestamp/End_Timestamp (or DurationNs)")
    agg: dict[str, list[float]] = {}
    for r in rows:
        name = (r.get(cols["name"]) or "").strip()
        if not name:
            continue
        if "start" in cols and "end" in cols:
            s, e = _num(r.get(cols["start"])), _num(r.get(cols["end"]))
            dur = e - s if s is not None and e is not None else None
        else:
            dur = None
        if dur is None and "duration" in cols:
            dur = _num(r.get(cols["duration"]))
        if dur is None or dur < 0:
            continue
        a = agg.setdefault(name, [0, 0.0])
        a[0] += 1
        a[1] += dur
    return _finish(agg)


def _finish(agg: dict[str, list[float]]) -> list[KernelStat]:
    grand = sum(v[1] for v in agg.values())
    out = [KernelStat(name, int(c), t, t / c if c else 0.0, t / grand if grand > 0 else 0.0, op_for_kernel(name))
           for name, (c, t) in agg.items()]
    return sorted(out, key=lambda k: (-k.total_ns, k.name))


def _candidates(folder: str) -> list[str]:
    return sorted(glob.glob(os.path.join(folder, "**", "*.csv"), recursive=True))


def summarize(path: str) -> tuple[list[KernelStat], list[str]]:
    """Kernels from a CSV file or a rocprof output folder, sorted by total time; plus the files used.

    In a folder the kernel stats file wins (exact totals), then kernel traces, then the legacy
    `results.stats.csv`; API/memory-copy stats (hip_api_stats.csv...) are used only if nothing else is there."""
    if os.path.isfile(path):
        k = kind_of(path)
        if k == "stats":
            return parse_stats(path), [path]
        if k == "trace":
            return parse_trace(path), [path]
        raise ValueError(f"{path}: neither a kernel trace nor a stats CSV (unrecognised columns)")
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{path}: no such file or folder")
    files = _candidates(path)
    base = [(f, os.path.basename(f).lower()) for f in files]
    groups = [
        [f for f, b in base if b.endswith("kernel_stats.csv")],
        [f for f, b in base if b.endswith("kernel_trace.csv")],
        [f for f, b in base if b == "results.stats.csv" or b.endswith(".stats.csv")],
        [f for f, b in base if b in ("results.csv",) and kind_of(f) == "trace"],
        [f for f, b in base if kind_of(f) in ("stats", "trace")],
    ]
    for group in groups:
        if group:
            merged: dict[str, list[float]] = {}
            for f in group:
                for s in (parse_stats(f) if kind_of(f) == "stats" else parse_trace(f)):
                    a = merged.setdefault(s.name, [0, 0.0])
                    a[0] += s.calls
                    a[1] += s.total_ns
            return _finish(merged), group
    raise ValueError(f"{path}: no rocprof CSV found (expected *_kernel_stats.csv, *_kernel_trace.csv or "
                     "results.stats.csv)")


def by_op(stats: list[KernelStat]) -> list[dict]:
    agg: dict[str, list[float]] = {}
    for s in stats:
        a = agg.setdefault(s.op, [0, 0.0, 0.0])
        a[0] += s.calls
        a[1] += s.total_ns
        a[2] += s.share
    return [dict(op=op, calls=int(c), total_ns=t, share=sh) for op, (c, t, sh) in
            sorted(agg.items(), key=lambda kv: -kv[1][1])]


def format_table(stats: list[KernelStat], top: int = 20, width: int = 70) -> str:
    lines = [f"{'total ms':>10} {'share':>6} {'calls':>7} {'mean us':>10}  {'op':<22} kernel"]
    for s in stats[:top]:
        name = s.name if len(s.name) <= width else s.name[: width - 3] + "..."
        lines.append(f"{s.total_ns / 1e6:>10.3f} {100 * s.share:>5.1f}% {s.calls:>7} {s.mean_ns / 1e3:>10.2f}  "
                     f"{s.op:<22} {name}")
    if len(stats) > top:
        rest = stats[top:]
        lines.append(f"{sum(s.total_ns for s in rest) / 1e6:>10.3f} {100 * sum(s.share for s in rest):>5.1f}% "
                     f"{sum(s.calls for s in rest):>7} {'':>10}  {'':<22} ({len(rest)} more kernels)")
    return "\n".join(lines)


# -- running -----------------------------------------------------------------------------------------

def profiler_command(cmd: list[str], out_dir: str, platform_kind: str | None = None) -> tuple[list[str], str]:
    """(argv to run, tool name) for this machine. ROCm: rocprofv3, else legacy rocprof; other
    platforms: torch.profiler through this module's own runner (CMD must be a Python script)."""
    if platform_kind is None:
        from amd_llama4 import platform

        platform_kind = platform.kind()
    if platform_kind == "rocm" or (platform_kind == "cpu" and os.environ.get("AMD_LLAMA4_FORCE_ROCPROF")):
        if shutil.which("rocprofv3"):
            return (["rocprofv3", "--kernel-trace", "--stats", "-f", "csv", "-d", out_dir, "--", *cmd],
                    "rocprofv3")
        if shutil.which("rocprof"):
            return ["rocprof", "--stats", "-o", os.path.join(out_dir, "results.csv"), *cmd], "rocprof"
        if platform_kind == "rocm":
            raise FileNotFoundError("neither rocprofv3 nor rocprof is on PATH (install rocprofiler-sdk)")
    return [sys.executable, "-m", "amd_llama4.tools.rocprof", "--torch-profile", out_dir, "--", *cmd], "torch.profiler"


def _torch_profile(out_dir: str, cmd: list[str]) -> int:
    """Run a Python script (or `-m module`, or `python script.py`) under torch.profiler in this process;
    write `torch_kernel_stats.csv` (device kernels on a GPU, CPU ops otherwise) in the stats layout."""
    import runpy

    import torch
    from torch.profiler import ProfilerActivity, profile

    if cmd and os.path.basename(cmd[0]).startswith("python"):
        cmd = cmd[1:]
    if not cmd:
        raise SystemExit("profile: nothing to run")
    gpu = torch.cuda.is_available()
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if gpu else [])
    rc = 0
    with profile(activities=acts) as prof:
        old_argv = sys.argv
        try:
            if cmd[0] == "-m":
                sys.argv = cmd[1:]
                runpy.run_module(cmd[1], run_name="__main__", alter_sys=True)
            else:
                if not cmd[0].endswith(".py") and not os.path.isfile(cmd[0]):
                    raise SystemExit(f"profile: without ROCm, CMD must be a Python script; got {cmd[0]!r}")
                sys.argv = cmd
                runpy.run_path(cmd[0], run_name="__main__")
        except SystemExit as e:
            rc = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        finally:
            sys.argv = old_argv
    rows = []
    for ev in prof.key_averages():
        if gpu:
            total_us = getattr(ev, "self_device_time_total", None) or getattr(ev, "self_cuda_time_total", 0)
        else:
            total_us = ev.self_cpu_time_total
        if total_us and total_us > 0:
            rows.append((ev.key, ev.count, total_us * 1e3))
    grand = sum(r[2] for r in rows) or 1.0
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "torch_kernel_stats.csv")
    with open(path, "w", newline="") as f:
        w = csv.writer(f, quoting=csv.QUOTE_NONNUMERIC)
        w.writerow(["Name", "Calls", "TotalDurationNs", "AverageNs", "Percentage"])
        for name, calls, total in sorted(rows, key=lambda r: -r[2]):
            w.writerow([name, int(calls), int(total), total / max(calls, 1), 100 * total / grand])
    return rc


def run(cmd: list[str], out_dir: str, timeout: float | None = None) -> tuple[int, str]:
    argv, tool = profiler_command(cmd, out_dir)
    os.makedirs(out_dir, exist_ok=True)
    proc = subprocess.run(argv, timeout=timeout)
    return proc.returncode, tool


if __name__ == "__main__":
    # Internal entry point of the torch.profiler path: python -m amd_llama4.tools.rocprof --torch-profile DIR -- CMD
    if len(sys.argv) >= 3 and sys.argv[1] == "--torch-profile":
        rest = sys.argv[3:]
        if rest and rest[0] == "--":
            rest = rest[1:]
        sys.exit(_torch_profile(sys.argv[2], rest))
    sys.exit("usage: python -m amd_llama4.tools.rocprof --torch-profile OUT_DIR -- script.py [args]")
