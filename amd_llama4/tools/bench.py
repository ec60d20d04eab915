"""Shared benchmark helpers: timing (GPU events or wall clock), device peaks, roofline, run metadata.

Peaks come from `platform.DEVICE_SPECS` on GPUs; on CPU they are measured (a large matmul for
FLOP/s, a large copy for bytes/s) because no table can know the host.
"""
from __future__ import annotations

import os
import statistics
import subprocess
import time
from dataclasses import asdict, dataclass
from typing import Callable

import torch

from amd_llama4 import platform


@dataclass(frozen=True)
class Peaks:
    """Peak rates used as the roofline: FLOP/s per dtype family and memory bytes/s."""

    device: str  # DEVICE_SPECS key, or "cpu"
    name: str
    flops_bf16: float
    flops_fp8: float
    bytes_per_s: float
    source: str  # "spec" (vendor table) or "measured"

    def flops(self, dtype: str) -> float:
        return self.flops_fp8 if dtype.startswith("fp8") or dtype.startswith("float8") else self.flops_bf16

    def as_dict(self) -> dict:
        return asdict(self)


def spec_key(gpu_name: str | None) -> str | None:
    """DEVICE_SPECS key for a device name ('AMD Instinct MI300X' -> 'mi300x'), or None if unknown."""
    if not gpu_name:
        return None
    low = gpu_name.lower().replace(" ", "").replace("-", "").replace("_", "")
    # Longest key first so that e.g. 'mi325x' never matches a shorter key by accident.
    for key in sorted(platform.DEVICE_SPECS, key=len, reverse=True):
        if key in low:
            return key
    return None


def spec_peaks(key: str) -> Peaks:
    s = platform.DEVICE_SPECS[key]
    return Peaks(key, s.name, s.bf16_tflops * 1e12, s.fp8_tflops * 1e12, s.hbm_tb_s * 1e12, "spec")


def measure_cpu_peaks(n: int = 1024, copy_mb: int = 256, repeats: int = 3) -> Peaks:
    """Best-of-`repeats` rates of an n x n matmul (fp32 and bf16) and a `copy_mb` MB clone."""
    def best(fn: Callable[[], object]) -> float:
        fn()
        ts = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
        return min(ts)

    rates = {}
    for dt in (torch.float32, torch.bfloat16):
        a = torch.randn(n, n).to(dt)
        b = torch.randn(n, n).to(dt)
        rates[dt] = 2 * n**3 / best(lambda: a @ b)
    x = torch.empty(copy_mb * 2**20 // 4, dtype=torch.float32).fill_(1.0)
    bw = 2 * x.numel() * 4 / best(lambda: x.clone())  # read + write
    flops = max(rates.values())  # the CPU's best dense rate is its compute roof
    return Peaks("cpu", "cpu", flops, flops, bw, "measured")


def device_peaks(device: torch.device | str | None = None, cpu_peaks: Peaks | None = None) -> Peaks | None:
    """Peaks for the device the benchmark runs on. None for a GPU that is not in DEVICE_SPECS."""
    dev = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if dev.type == "cpu":
        return cpu_peaks or measure_cpu_peaks()
    key = spec_key(torch.cuda.get_device_name(dev))
    return spec_peaks(key) if key else None


def time_fn(fn: Callable[[], object], device: torch.device | str, warmup: int = 3, iters: int = 20,
            max_seconds: float = 2.0) -> list[float]:
    """Per-iteration times in ms. GPU: CUDA/HIP events around each call; CPU: perf_counter.
    Stops early after `max_seconds` of timed work (at least min(3, iters) iterations) so huge shapes
    stay bounded."""
    dev = torch.device(device)
    for _ in range(warmup):
        fn()
    times: list[float] = []
    spent = 0.0
    if dev.type == "cpu":
        for i in range(iters):
            t0 = time.perf_counter()
            fn()
            dt = time.perf_counter() - t0
            times.append(dt * 1e3)
            spent += dt
            if spent > max_seconds and i >= min(2, iters - 1):
                break
        return times
    torch.cuda.synchronize(dev)
    for i in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        ms = start.elapsed_time(end)
        times.append(ms)
        spent += ms / 1e3
        if spent > max_seconds and i >= min(2, iters - 1):
            break
    return times


def summarize_times(times_ms: list[float]) -> dict:
    return {"median_ms": statistics.median(times_ms), "min_ms": min(times_ms), "iters": len(times_ms)}


def roofline(flops: float, nbytes: float, ms: float, peaks: Peaks | None, dtype: str = "bf16") -> dict:
    """Achieved TFLOP/s and GB/s, and the share of the roof that binds at this arithmetic intensity:
    roof time = max(flops / peak_flops, bytes / peak_bw); pct_of_roofline = roof time / measured time."""
    s = ms / 1e3
    out = {"tflops": flops / s / 1e12 if s > 0 else None, "gbps": nbytes / s / 1e9 if s > 0 else None,
           "flops": flops, "bytes": nbytes, "intensity": flops / nbytes if nbytes else None}
    if peaks is None or s <= 0:
        return {**out, "pct_peak_flops": None, "pct_peak_bw": None, "pct_of_roofline": None, "bound": None}
    pf, pb = peaks.flops(dtype), peaks.bytes_per_s
    t_compute, t_memory = flops / pf, nbytes / pb
    return {**out, "pct_peak_flops": 100 * flops / s / pf, "pct_peak_bw": 100 * nbytes / s / pb,
            "pct_of_roofline": 100 * max(t_compute, t_memory) / s,
            "bound": "compute" if t_compute >= t_memory else "memory"}


def git_revision(path: str | None = None) -> str | None:
    """Commit of the checkout this code runs from (with '-dirty' when modified), or None."""
    cwd = path or os.path.dirname(os.path.abspath(__file__))
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True,
                             timeout=10).stdout.strip()
        if not rev:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return rev + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def run_metadata() -> dict:
    """Device, versions and git revision stamped into every results file."""
    from amd_llama4.ops import native

    info = {**platform.info(), **native.info()}
    try:
        import triton  # noqa: PLC0415

        info["triton_version"] = triton.__version__
    except ImportError:
        info["triton_version"] = None
    info["git_revision"] = git_revision()
    info["spec_key"] = spec_key(info.get("gpu_name")) if info.get("gpu_name") else "cpu"
    info["time"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    info["hostname"] = os.uname().nodename
    return info
