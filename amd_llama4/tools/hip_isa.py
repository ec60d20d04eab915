"""Per-kernel resource usage of the HIP sources (csrc/hip/*.hip) for an AMD arch, from the device
assembly clang emits (compiled here, no GPU needed, or read from scripts/compile_hip.sh's output).

`hip_kernel_records("gfx942")` -> one dict per kernel: kernel, config, vgpr, agpr, sgpr, vgpr_spill,
sgpr_spill, scratch_bytes, lds_bytes, occupancy (waves/SIMD), mfma (v_mfma instruction count).
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HIP_DIR = ROOT / "csrc" / "hip"
_META_KEYS = {".vgpr_count": "vgpr", ".agpr_count": "agpr", ".sgpr_count": "sgpr", ".vgpr_spill_count": "vgpr_spill",
              ".sgpr_spill_count": "sgpr_spill", ".private_segment_fixed_size": "scratch_bytes",
              ".group_segment_fixed_size": "lds_bytes"}


def _clang() -> str:
    for c in (os.environ.get("AMD_LLAMA4_HIP_CLANG"), "/opt/rocm/llvm/bin/clang++", "clang++-19"):
        if c and (shutil.which(c) or Path(c).exists()):
            return c
    raise FileNotFoundError("no HIP clang: install clang-19 (bash scripts/install_rocm_toolchain.sh) or ROCm")


def _device_libs() -> list[str]:
    if Path("/opt/rocm/amdgcn/bitcode").is_dir():
        return []  # a ROCm install: clang finds its device libraries
    out = subprocess.run(["bash", str(ROOT / "scripts" / "install_rocm_toolchain.sh")], check=True,
                         capture_output=True, text=True).stdout.strip().splitlines()[-1]
    return [f"--rocm-device-lib-path={out}"]


def compile_device_asm(arch: str, out_dir: Path) -> list[Path]:
    """csrc/hip/*.hip -> out_dir/<name>.s (device assembly for `arch`)."""
    cc, libs = _clang(), _device_libs()
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for src in sorted(HIP_DIR.glob("*.hip")):
        dst = out_dir / f"{src.stem}.s"
        subprocess.run([cc, "-x", "hip", f"--offload-arch={arch}", *libs, "-D__HIP_PLATFORM_AMD__", "-std=c++17",
                        "-O3", f"-I{ROOT / 'csrc' / 'include'}", f"-I{HIP_DIR}", "--offload-device-only", "-S",
                        str(src), "-o", str(dst)], check=True, capture_output=True, text=True)
        paths.append(dst)
    return paths


def _demangle(names: list[str]) -> dict[str, str]:
    tool = shutil.which("llvm-cxxfilt-19") or shutil.which("llvm-cxxfilt") or shutil.which("c++filt")
    if not tool or not names:
        return {n: n for n in names}
    out = subprocess.run([tool], input="\n".join(names), capture_output=True, text=True).stdout.splitlines()
    return dict(zip(names, out)) if len(out) == len(names) else {n: n for n in names}


def _split_name(demangled: str) -> tuple[str, str]:
    """'al4::gpu::(anon)::moe_gemm_kernel<unsigned char, true, true, false>(GemmArgs)' ->
    ('moe_gemm_kernel', 'unsigned char, true, true, false')."""
    d = demangled.replace("(anonymous namespace)", "anon")
    head = d.split("(")[0] if "(" in d else d
    m = re.match(r"(.*?)(<(.*)>)?$", head)
    base = m.group(1).split("::")[-1]
    return base, (m.group(3) or "")


def _config(base: str, targs: str) -> str:
    a = [t.strip() for t in targs.split(",")] if targs else []
    if base == "moe_gemm_kernel" and len(a) == 4:  # <TA, FP8, FNUZ, GATHER>
        kind = ("fp8-e4m3fnuz" if a[2] == "true" else "fp8-e4m3fn") if a[1] == "true" else "bf16"
        return f"{kind}{' gather' if a[3] == 'true' else ''}"
    return targs.replace("al4::", "")


def parse_device_asm(text: str, source: str = "") -> list[dict]:
    # Per function: MFMA count from its code, occupancy from the comment block after it.
    funcs: dict[str, dict] = {}
    cur = None
    for line in text.splitlines():
        m = re.match(r"^([A-Za-z_.$][\w.$]*):\s*(;.*)?$", line)
        if m and not m.group(1).startswith(".L"):
            cur = m.group(1)
            funcs.setdefault(cur, {"mfma": 0, "occupancy": None})
            continue
        if cur is None:
            continue
        s = line.strip()
        if s.startswith("v_mfma"):
            funcs[cur]["mfma"] += 1
        m = re.match(r"; Occupancy: (\d+)", s)
        if m:
            funcs[cur]["occupancy"] = int(m.group(1))
    # Kernel descriptors from the amdgpu metadata (YAML) at the end.
    records, entry = [], None
    in_meta = False
    for line in text.splitlines():
        if ".amdgpu_metadata" in line:
            in_meta = not line.strip().startswith(".end_amdgpu_metadata")
            continue
        if not in_meta:
            continue
        s = line.strip().lstrip("- ").strip()
        if ":" not in s:
            continue
        key, _, val = s.partition(":")
        val = val.strip()
        if key == ".kernels":
            continue
        if key == ".args":
            entry = entry if entry is not None else {}
        if key in _META_KEYS:
            entry = entry if entry is not None else {}
            entry[_META_KEYS[key]] = int(val)
        elif key == ".symbol":
            entry = entry if entry is not None else {}
            entry["symbol"] = val.removesuffix(".kd")
        if entry is not None and {"symbol", *(_META_KEYS.values())} <= entry.keys():
            records.append(entry)
            entry = None
    names = _demangle([r["symbol"] for r in records])
    out = []
    for r in records:
        base, targs = _split_name(names[r["symbol"]])
        f = funcs.get(r["symbol"], {})
        out.append({"kernel": base, "config": _config(base, targs), "source": source, "symbol": r["symbol"],
                    "vgpr": r["vgpr"], "agpr": r["agpr"], "sgpr": r["sgpr"], "vgpr_spill": r["vgpr_spill"],
                    "sgpr_spill": r["sgpr_spill"], "scratch_bytes": r["scratch_bytes"], "lds_bytes": r["lds_bytes"],
                    "occupancy": f.get("occupancy"), "mfma": f.get("mfma", 0)})
    return out


def hip_kernel_records(arch: str = "gfx942", build_dir: str | os.PathLike | None = None) -> list[dict]:
    """One record per kernel of csrc/hip for `arch`. With `build_dir` holding <name>.s files (from
    scripts/compile_hip.sh, under <build_dir> or <build_dir>/<arch>) those are read; otherwise the
    sources are compiled (into build_dir when given, else a temporary folder)."""
    if not arch.startswith("gfx"):
        raise ValueError(f"hip_kernel_records: {arch!r} is not an AMD arch (gfx942, gfx950, ...)")
    asm: list[Path] = []
    if build_dir is not None:
        for d in (Path(build_dir) / arch, Path(build_dir)):
            asm = sorted(d.glob("*.s"))
            if asm:
                break
    if not asm:
        if build_dir is not None:
            asm = compile_device_asm(arch, Path(build_dir) / arch)
        else:
            with tempfile.TemporaryDirectory() as tmp:
                return [r for p in compile_device_asm(arch, Path(tmp)) for r in parse_device_asm(p.read_text(), p.stem)]
    return [r for p in asm for r in parse_device_asm(p.read_text(), p.stem)]
