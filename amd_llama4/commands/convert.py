"""`amd-llama4 convert`: write an FP8 or int4 (compressed-tensors pack-quantized) checkpoint (sharded
safetensors + config.json), verified."""
from __future__ import annotations

import sys


def run(args) -> int:
    from amd_llama4.engine.llm_engine import parse_dtype
    from amd_llama4.tools.checkpoint_convert import convert_checkpoint

    if getattr(args, "to", "fp8") == "int4":
        return _run_int4(args)
    if getattr(args, "to", "fp8") == "gguf":  # amd_llama4/gguf/writer.py
        from amd_llama4.tools.gguf_export import run_convert

        return run_convert(args)
    if args.fp8 is None:
        print("amd-llama4 convert: error: --fp8 {fn,fnuz} is required with --to fp8", file=sys.stderr)
        return 2
    fmt = {"fn": "e4m3fn", "fnuz": "e4m3fnuz"}[args.fp8]
    try:
        out = convert_checkpoint(args.model, args.out, fmt, args.block, args.max_shard_size, parse_dtype(args.dtype),
                                 progress=not args.no_progress)
    except (FileExistsError, ValueError) as e:  # CheckpointError is a ValueError
        print(f"amd-llama4 convert: error: {e}", file=sys.stderr)
        return 1
    print(f"wrote and verified {out} (fp8 {fmt}{f', {args.block}x{args.block} blocks' if args.block else ''})")
    return 0


def _run_int4(args) -> int:
    from amd_llama4.engine.llm_engine import parse_dtype
    from amd_llama4.tools.int4_convert import convert_checkpoint_int4

    try:
        out = convert_checkpoint_int4(args.model, args.out, args.group_size, args.zero_point, args.max_shard_size,
                                      parse_dtype(args.dtype), progress=not args.no_progress)
    except (FileExistsError, ValueError) as e:  # CheckpointError is a ValueError
        print(f"amd-llama4 convert: error: {e}", file=sys.stderr)
        return 1
    print(f"wrote and verified {out} (int4 compressed-tensors pack-quantized, group {args.group_size}, "
          f"{'asymmetric' if args.zero_point else 'symmetric'})")
    return 0


def register(sub) -> None:
    p = sub.add_parser("convert", help="quantise a checkpoint to FP8 (e4m3fn or e4m3fnuz) and verify it")
    p.add_argument("--model", required=True, help="preset name, or checkpoint folder (bf16/fp32, or FP8 to re-format)")
    p.add_argument("--out", required=True, help="new folder (refused if it exists)")
    p.add_argument("--to", default="fp8", choices=["fp8", "int4", "gguf"],
                   help="fp8 (default) | int4: weight-only round-to-nearest, written as compressed-tensors "
                        "pack-quantized (vLLM / transformers read it)")
    p.add_argument("--fp8", choices=["fn", "fnuz"],
                   help="with --to fp8 (required): stored format fn (OCP) or fnuz (MI300)")
    p.add_argument("--group-size", type=int, default=128, choices=[32, 64, 128],
                   help="with --to int4: input columns per scale")
    p.add_argument("--zero-point", action="store_true", help="with --to int4: asymmetric (a zero point per group)")
    p.add_argument("--outtype", default="f32", choices=["f32", "f16", "bf16", "q8_0", "q4_0"],
                   help="with --to gguf (--out is then the new .gguf file): llama.cpp's tensor type")
    p.add_argument("--block", type=int, default=None, help="block-scaled weights (e.g. 128 for 128x128); "
                                                          "default per output channel")
    p.add_argument("--max-shard-size", default="5GB", help="e.g. 5GB, 500MB")
    p.add_argument("--dtype", default="bfloat16", help="dtype of the tensors kept in high precision")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)
