"""Ahead-of-time compilation of every Triton kernel of the package (no GPU needed) and per-kernel
resource records from the generated ISA: registers, spills, scratch, LDS, occupancy, matrix ops.

AMD (gfx942, gfx950): parsed from the amdgcn assembly metadata (.vgpr_count, .agpr_count, ...,
`; Occupancy:` = waves per SIMD), LDS from the compiled kernel's metadata (the text says 0),
`mfma` = count of v_mfma* instructions. NVIDIA (sm_90): registers / stack / local from the bundled
`cuobjdump --dump-resource-usage`, `mfma` = count of `wgmma.mma_async` in the PTX; occupancy is
estimated as resident warps per SM sub-partition (comparable to AMD waves per SIMD).
Native HIP code objects are added when amd_llama4.tools.hip_isa is importable.
"""
from __future__ import annotations

import json
import importlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

ARCHS = ("gfx942", "gfx950", "sm_90")
LDS_LIMIT = {"gfx942": 64 * 1024, "gfx950": 160 * 1024, "sm_90": 227 * 1024}


@dataclass
class KernelRecord:
    kernel: str
    config: str
    source: str  # default | tuned:<device>:<source> | fixed | native
    arch: str
    vgpr: int
    agpr: int
    sgpr: int
    vgpr_spill: int
    sgpr_spill: int
    scratch_bytes: int
    lds_bytes: int
    occupancy: float
    mfma: int
    mma_sync: int = 0  # sm_90 only: mma.sync (pre-Hopper tensor-core) instructions, used when M < 64
    num_warps: int = 4
    dot: bool = False  # the kernel uses tl.dot (expects matrix instructions)

    def to_dict(self) -> dict:
        return asdict(self)


def _target(arch: str):
    from triton.backends.compiler import GPUTarget

    if arch.startswith("gfx"):
        return GPUTarget("hip", arch, 64)
    if arch.startswith("sm_"):
        return GPUTarget("cuda", int(arch[3:]), 32)
    raise ValueError(f"unknown arch {arch!r}; expected one of {ARCHS}")


def _options(arch: str, cfg) -> dict:
    # fp fusion stated explicitly: Triton 3.9 warns when its default is used (and changes it in 3.10)
    if cfg is None:
        return {"num_warps": 4, "enable_fp_fusion": True}
    opts = {"num_warps": cfg.num_warps, "num_stages": cfg.num_stages, "enable_fp_fusion": True}
    if arch.startswith("gfx"):
        opts.update(waves_per_eu=cfg.waves_per_eu, matrix_instr_nonkdim=cfg.matrix_instr_nonkdim,
                    kpack=cfg.kpack if arch == "gfx942" else 1)
    return opts


def compile_variant(variant, cfg, arch: str):
    """-> triton CompiledKernel for one catalog variant and config."""
    import triton
    from triton.compiler import ASTSource

    from amd_llama4.ops.triton.catalog import compile_args

    signature, constexprs, attrs = compile_args(variant, cfg)
    src = ASTSource(fn=variant.fn, signature=signature, constexprs=constexprs, attrs=attrs)
    return triton.compile(src, target=_target(arch), options=_options(arch, cfg))


def _meta(text: str, key: str) -> int:
    m = re.search(rf"^\s*\.{key}:\s*(\d+)", text, re.M)
    return int(m.group(1)) if m else 0


def amd_record(ck, kernel: str, config: str, source: str, arch: str, num_warps: int, dot: bool) -> KernelRecord:
    text = ck.asm["amdgcn"]
    occ = re.search(r";\s*Occupancy:\s*(\d+)", text)
    return KernelRecord(
        kernel=kernel, config=config, source=source, arch=arch, vgpr=_meta(text, "vgpr_count"),
        agpr=_meta(text, "agpr_count"), sgpr=_meta(text, "sgpr_count"), vgpr_spill=_meta(text, "vgpr_spill_count"),
        sgpr_spill=_meta(text, "sgpr_spill_count"), scratch_bytes=_meta(text, "private_segment_fixed_size"),
        lds_bytes=int(ck.metadata.shared), occupancy=float(occ.group(1)) if occ else 0.0,
        mfma=len(re.findall(r"^\s*v_mfma", text, re.M)), num_warps=num_warps, dot=dot)


def _cuobjdump() -> str | None:
    import triton

    p = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    return str(p) if p.exists() else shutil.which("cuobjdump")


def _cuda_resources(cubin: bytes) -> dict:
    tool = _cuobjdump()
    if tool is None:
        raise RuntimeError("cuobjdump not found (it ships with triton's NVIDIA backend)")
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "k.cubin")
        Path(path).write_bytes(cubin)
        text = subprocess.run([tool, "--dump-resource-usage", path], capture_output=True, text=True, check=True).stdout
    res = dict(re.findall(r"(REG|STACK|SHARED|LOCAL):(\d+)", text))
    return {k: int(v) for k, v in res.items()}


def _sm90_occupancy(regs: int, shared: int, num_warps: int) -> float:
    """Resident warps per SM sub-partition (4 per SM): limited by 64K registers (allocated per warp in
    units of 256), 228 KiB shared memory (+1 KiB reserved per block), 64 warps and 32 blocks per SM."""
    regs_per_warp = -(-max(regs, 1) * 32 // 256) * 256
    blocks = min(65536 // (regs_per_warp * num_warps), 64 // num_warps, 32)
    if shared:
        blocks = min(blocks, (228 * 1024) // (shared + 1024))
    return blocks * num_warps / 4


def cuda_record(ck, kernel: str, config: str, source: str, arch: str, num_warps: int, dot: bool) -> KernelRecord:
    res = _cuda_resources(ck.asm["cubin"])
    shared = int(ck.metadata.shared)
    local = res.get("LOCAL", 0) + res.get("STACK", 0)
    return KernelRecord(
        kernel=kernel, config=config, source=source, arch=arch, vgpr=res.get("REG", 0), agpr=0, sgpr=0,
        vgpr_spill=res.get("LOCAL", 0), sgpr_spill=0, scratch_bytes=local, lds_bytes=shared,
        occupancy=_sm90_occupancy(res.get("REG", 0), shared, num_warps),
        mfma=len(re.findall(r"wgmma\.mma_async", ck.asm["ptx"])),
        mma_sync=len(re.findall(r"\bmma\.sync", ck.asm["ptx"])), num_warps=num_warps, dot=dot)


def triton_records(arch: str, kernels: list[str] | None = None, tuned: bool = True) -> list[KernelRecord]:
    """Compile every catalog kernel (or those whose name starts with one of `kernels`) with its
    default and (if tuned) tuned configs for `arch`. In a process where triton interprets
    (TRITON_INTERPRET=1 at import, e.g. the test session) the work runs in a child process."""
    from amd_llama4.ops.triton.kernels import interpreted

    if interpreted():
        return _records_in_child(arch, kernels, tuned)
    return _triton_records(arch, kernels, tuned)


def _records_in_child(arch, kernels, tuned) -> list[KernelRecord]:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    cmd = [sys.executable, "-m", "amd_llama4.cli", "isa", "--arch", arch, "--json", "--no-native"]
    cmd += [a for k in kernels or () for a in ("--kernel", k)] + ([] if tuned else ["--no-tuned"])
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if res.returncode:
        raise RuntimeError(f"isa child process failed ({res.returncode}): {res.stderr[-2000:]}")
    return [KernelRecord(**d) for d in json.loads(res.stdout)]


def _triton_records(arch, kernels, tuned) -> list[KernelRecord]:
    from amd_llama4.ops.triton.catalog import configs_for, variants

    out = []
    for v in variants(arch):
        if kernels and not any(v.kernel.startswith(k) for k in kernels):
            continue
        cfgs = configs_for(v, arch)
        for label, cfg, source in cfgs if tuned else cfgs[:1]:
            ck = compile_variant(v, cfg, arch)
            nw = cfg.num_warps if cfg is not None else 4
            make = amd_record if arch.startswith("gfx") else cuda_record
            out.append(make(ck, v.kernel, label, source, arch, nw, v.dot))
    return out


NATIVE_BUILD = Path(__file__).resolve().parents[2] / "build" / "hip-check"  # scripts/compile_hip.sh output


def native_records(arch: str, build_dir: str | os.PathLike | None = None, compile: bool = False) -> list[KernelRecord]:
    """Records of the native HIP kernels (AMD archs) from amd_llama4.tools.hip_isa: read from the
    device assembly in `build_dir` (default build/hip-check, written by scripts/compile_hip.sh) when
    it was built, or compiled now when `compile`. [] when hip_isa is absent or nothing is built."""
    if not arch.startswith("gfx"):
        return []
    try:  # through sys.modules, so a replaced or blocked module is honoured
        hip_isa = importlib.import_module("amd_llama4.tools.hip_isa")
    except ImportError:
        return []
    build = Path(build_dir) if build_dir is not None else NATIVE_BUILD
    built = any((d.is_dir() and any(d.glob("*.s"))) for d in (build / arch, build))
    if not built and not compile:
        return []
    try:
        raw = hip_isa.hip_kernel_records(arch, build if built else None)
    except Exception as e:  # noqa: BLE001 - the native table is optional; say why it is missing
        print(f"isa: native HIP records unavailable for {arch}: {type(e).__name__}: {e}", file=sys.stderr)
        return []
    out = []
    fields = KernelRecord.__dataclass_fields__
    for d in raw:
        rec = {k: d[k] for k in fields if k in d}
        rec.setdefault("config", "native")
        rec["source"] = f"native:{d['source']}" if d.get("source") else "native"
        rec["arch"], rec["dot"] = arch, rec.get("mfma", 0) > 0
        for k in ("vgpr", "agpr", "sgpr", "vgpr_spill", "sgpr_spill", "scratch_bytes", "lds_bytes", "mfma"):
            rec[k] = int(rec.get(k) or 0)
        rec["occupancy"] = float(rec.get("occupancy") or 0)
        out.append(KernelRecord(**rec))
    return out


def format_table(records: list[KernelRecord]) -> str:
    cols = ("kernel", "config", "source", "vgpr", "agpr", "sgpr", "vgpr_spill", "sgpr_spill", "scratch_bytes",
            "lds_bytes", "occupancy", "mfma")
    heads = ("kernel", "config", "source", "vgpr", "agpr", "sgpr", "vspill", "sspill", "scratch", "lds", "occ", "mfma")
    if any(r.mma_sync for r in records):  # sm_90 tiles under 64 rows use mma.sync, not wgmma
        cols, heads = cols + ("mma_sync",), heads + ("mma.sync",)
    rows = [[str(getattr(r, c)) for c in cols] for r in records]
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h) for i, h in enumerate(heads)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(heads, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in rows]
    return "\n".join(lines)
