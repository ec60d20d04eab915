"""`amd-llama4 isa --arch {gfx942,gfx950,sm_90} [--json]`: per-kernel register / spill / LDS /
occupancy / matrix-instruction table of every Triton kernel (default and tuned configs), compiled
ahead of time without a GPU, plus the native code objects when built."""
from __future__ import annotations

import json
import sys


def run(args) -> int:
    try:
        import triton  # noqa: F401
    except ImportError:
        print("amd-llama4 isa: triton is not installed (pip install triton)", file=sys.stderr)
        return 1
    from amd_llama4.tools import isa

    records = isa.triton_records(args.arch, kernels=args.kernel or None, tuned=not args.no_tuned)
    if not args.no_native:
        native = isa.native_records(args.arch, args.native_build, compile=args.native_compile)
        records += [r for r in native if not args.kernel or any(r.kernel.startswith(k) for k in args.kernel)]
    if args.json:
        print(json.dumps([r.to_dict() for r in records], indent=1))
    else:
        print(f"# arch {args.arch}; LDS limit {isa.LDS_LIMIT[args.arch] // 1024} KiB; "
              f"occ = {'waves per SIMD' if args.arch.startswith('gfx') else 'resident warps per SM sub-partition'}; "
              f"mfma = {'v_mfma*' if args.arch.startswith('gfx') else 'wgmma.mma_async'} count")
        print(isa.format_table(records))
    return 0


def register(sub) -> None:
    from amd_llama4.tools.isa import ARCHS

    p = sub.add_parser("isa", help="ISA resource table of the Triton (and native) kernels, compiled without a GPU")
    p.add_argument("--arch", required=True, choices=ARCHS)
    p.add_argument("--json", action="store_true", help="one JSON record per kernel/config")
    p.add_argument("--kernel", action="append", help="only kernels whose name starts with this (repeatable)")
    p.add_argument("--no-tuned", action="store_true", help="default configs only")
    p.add_argument("--no-native", action="store_true", help="skip the native HIP code objects")
    p.add_argument("--native-build", default=None,
                   help="folder of scripts/compile_hip.sh output (default: build/hip-check when it exists)")
    p.add_argument("--native-compile", action="store_true",
                   help="compile csrc/hip now when nothing is built (needs clang-19 or ROCm)")
    p.set_defaults(func=run)
