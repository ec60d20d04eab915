"""`amd-llama4 profile -- CMD...`: run CMD under rocprofv3 (ROCm) or torch.profiler (elsewhere) and
print its top kernels; `amd-llama4 profile summarize PATH [--json]`: summarise existing CSVs."""
from __future__ import annotations

import argparse
import json
import os
import time


def _summarize(path: str, top: int, as_json: bool, by_op: bool) -> int:
    from amd_llama4.tools import rocprof

    try:
        stats, files = rocprof.summarize(path)
    except (ValueError, FileNotFoundError) as e:
        print(f"profile summarize: {e}")
        return 1
    if as_json:
        doc = {"files": files, "kernels": [s.as_dict() for s in stats], "by_op": rocprof.by_op(stats)}
        print(json.dumps(doc, indent=1))
        return 0
    print(f"# {', '.join(files)}: {len(stats)} kernels, {sum(s.total_ns for s in stats) / 1e6:.3f} ms total")
    print(rocprof.format_table(stats, top))
    if by_op:
        print("\nby op:")
        for row in rocprof.by_op(stats):
            print(f"  {row['op']:<24} {row['total_ns'] / 1e6:>10.3f} ms {100 * row['share']:>5.1f}%  "
                  f"{row['calls']} calls")
    return 0


def run(args) -> int:
    rest = list(args.cmd)
    if rest and rest[0] == "--":
        rest = rest[1:]
    if rest and rest[0] == "summarize":
        p = argparse.ArgumentParser(prog="amd-llama4 profile summarize",
                                    description="top kernels from rocprofv3/rocprof/torch CSVs")
        p.add_argument("path", help="a CSV file or an output folder")
        p.add_argument("--json", action="store_true", help="kernels sorted by total time as JSON")
        p.add_argument("--top", type=int, default=args.top)
        p.add_argument("--by-op", action="store_true", help="also print totals per op")
        s = p.parse_args(rest[1:])
        return _summarize(s.path, s.top, s.json or args.json, s.by_op)
    if not rest:
        print("usage: amd-llama4 profile [--out DIR] -- CMD [ARGS...] | amd-llama4 profile summarize PATH [--json]")
        return 2
    from amd_llama4.tools import rocprof

    out = args.out or os.path.join("profiles", time.strftime("%Y%m%d-%H%M%S"))
    try:
        rc, tool = rocprof.run(rest, out, timeout=args.timeout or None)
    except FileNotFoundError as e:
        print(f"profile: {e}")
        return 1
    print(f"profile: {tool} wrote {out} (command exit code {rc})")
    status = _summarize(out, args.top, args.json, by_op=not args.json)
    return rc or status


def register(sub) -> None:
    p = sub.add_parser("profile", help="run a command under rocprofv3/torch.profiler, or summarize CSVs",
                       description="amd-llama4 profile [--out DIR] -- CMD...   |   "
                                   "amd-llama4 profile summarize PATH [--json] [--top N] [--by-op]")
    p.add_argument("--out", default="", help="output folder (default: profiles/<timestamp>)")
    p.add_argument("--top", type=int, default=20, help="kernels to print")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--timeout", type=float, default=0, help="kill CMD after S seconds (0 = no limit)")
    p.add_argument("cmd", nargs=argparse.REMAINDER, help="-- CMD [ARGS...], or: summarize PATH")
    p.set_defaults(func=run)
