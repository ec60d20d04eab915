"""`amd-llama4 info`: torch, platform, GPU arch/count, FP8 format, native extension, Triton, and
whether each kernel backend loaded (with the error when not).
With --model: weight bytes by component and KV bytes per token (computed without allocating weights)."""
from __future__ import annotations

import json


def _fmt_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return str(n)


def run(args) -> int:
    if args.model:
        return _run_model(args)
    from amd_llama4 import platform

    from amd_llama4.ops import native
    from amd_llama4.ops.dispatch import backend_status

    facts = {**platform.info(), **native.info()}
    # backend -> "ok" or why its kernels cannot run here (import error, CPU-only build, disabled)
    facts["backends"] = {b: why or "ok" for b, why in backend_status().items()}
    if args.json:
        print(json.dumps(facts, indent=2, default=str))
        return 0
    width = max(map(len, [*facts, "backend triton"]))
    for k, v in facts.items():
        if k != "backends":
            print(f"{k:<{width}}  {v}")
    for b, state in facts["backends"].items():
        print(f"{'backend ' + b:<{width}}  {state}")
    return 0


def _run_model(args) -> int:
    from amd_llama4.engine.llm_engine import parse_dtype
    from amd_llama4.tools.quant_memory import memory_report

    rep = memory_report(args.model, parse_dtype(args.dtype), args.quantization, args.kv_cache_dtype)
    if args.json:
        print(json.dumps(rep, indent=2))
        return 0
    w = rep["weights"]
    print(f"model {rep['model']}  dtype {rep['dtype']}  fp8 weights {'yes' if rep['quantized'] else 'no'}")
    for k in ("attention", "experts", "shared_expert", "dense_mlp", "router", "embeddings", "norms", "total"):
        print(f"  {k:<14} {w[k]:>16,d} bytes  {_fmt_bytes(w[k]):>12}")
    kv = rep["kv"]
    print(f"KV cache ({rep['kv_cache_dtype']}): {kv['kv_bytes_per_token']:,d} bytes/token (all layers), "
          f"{kv['kv_bytes_per_token_global_layers']:,d} bytes/token beyond one attention chunk (global layers)")
    return 0


def register(sub) -> None:
    p = sub.add_parser("info", help="platform, GPU arch, FP8 format, available backends; "
                                    "with --model: weight and KV bytes")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--model", default=None, help="preset name or checkpoint folder: print its memory by component")
    p.add_argument("--quantization", default=None, choices=["fp8"], help="count weights as online FP8")
    p.add_argument("--dtype", default="bfloat16", help="high-precision dtype (default bfloat16)")
    p.add_argument("--kv-cache-dtype", default=None, choices=["auto", "fp8"],
                   help="default: fp8 with FP8 weights, else auto (the model dtype)")
    p.set_defaults(func=run)
