"""`amd-llama4 info`: torch, platform, GPU arch/count, FP8 format, native extension, Triton."""
from __future__ import annotations

import json


def run(args) -> int:
    from amd_llama4 import platform

    facts = platform.info()
    if args.json:
        print(json.dumps(facts, indent=2, default=str))
        return 0
    width = max(map(len, facts))
    for k, v in facts.items():
        print(f"{k:<{width}}  {v}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("info", help="platform, GPU arch, FP8 format, available backends")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)
