"""Per-kernel resource table of the HIP sources for an AMD arch (no GPU needed).

  python perf/isa_report.py [--arch gfx942] [--build-dir build/hip-check]

Columns: VGPRs (arch VGPRs incl. AGPRs), AGPRs, SGPRs, spills, scratch bytes/lane, LDS bytes/block,
occupancy (waves/SIMD), MFMA instruction count. On gfx942 the fp8-e4m3fn GEMM variant takes the
portable path by design (gfx942 matrix cores read e4m3fnuz: convert weights with fn_to_fnuz).
"""
from __future__ import annotations

import argparse

from amd_llama4.tools.hip_isa import hip_kernel_records

COLS = ["kernel", "config", "vgpr", "agpr", "sgpr", "vgpr_spill", "sgpr_spill", "scratch_bytes", "lds_bytes",
        "occupancy", "mfma"]


def format_table(records: list[dict]) -> str:
    rows = [COLS] + [[str(r[c]) for c in COLS] for r in records]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLS))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in rows)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="gfx942")
    ap.add_argument("--build-dir", default=None, help="read <dir>/<arch>/*.s from scripts/compile_hip.sh")
    args = ap.parse_args(argv)
    print(format_table(hip_kernel_records(args.arch, args.build_dir)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
