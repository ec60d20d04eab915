"""`amd-llama4 convert`: write an FP8 checkpoint (sharded safetensors + config.json), verified."""
from __future__ import annotations

import sys


def run(args) -> int:
    from amd_llama4.engine.llm_engine import parse_dtype
    from amd_llama4.tools.checkpoint_convert import convert_checkpoint

    fmt = {"fn": "e4m3fn", "fnuz": "e4m3fnuz"}[args.fp8]
    try:
        out = convert_checkpoint(args.model, args.out, fmt, args.block, args.max_shard_size, parse_dtype(args.dtype),
                                 progress=not args.no_progress)
    except (FileExistsError, ValueError) as e:  # CheckpointError is a ValueError
        print(f"amd-llama4 convert: error: {e}", file=sys.stderr)
        return 1
    print(f"wrote and verified {out} (fp8 {fmt}{f', {args.block}x{args.block} blocks' if args.block else ''})")
    return 0


def register(sub) -> None:
    p = sub.add_parser("convert", help="quantise a checkpoint to FP8 (e4m3fn or e4m3fnuz) and verify it")
    p.add_argument("--model", required=True, help="preset name, or checkpoint folder (bf16/fp32, or FP8 to re-format)")
    p.add_argument("--out", required=True, help="new folder (refused if it exists)")
    p.add_argument("--fp8", required=True, choices=["fn", "fnuz"], help="stored format: fn (OCP) or fnuz (MI300)")
    p.add_argument("--block", type=int, default=None, help="block-scaled weights (e.g. 128 for 128x128); "
                                                          "default per output channel")
    p.add_argument("--max-shard-size", default="5GB", help="e.g. 5GB, 500MB")
    p.add_argument("--dtype", default="bfloat16", help="dtype of the tensors kept in high precision")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)
