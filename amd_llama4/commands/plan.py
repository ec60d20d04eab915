"""`amd-llama4 plan`: memory per GPU, whether it fits, max context/concurrency, roofline speeds."""
from __future__ import annotations

import json


def run(args) -> int:
    from amd_llama4.tools import planner

    weights = args.weights
    if weights is None:  # a pre-quantised checkpoint folder plans as fp8
        import os

        from amd_llama4.config import load_config

        pre = os.path.isdir(args.model) and load_config(args.model).quantization_config
        weights = "fp8" if pre else "bf16"
    try:
        inp = planner.PlanInput(model=args.model, gpu=args.gpu, num_gpus=args.num_gpus, weights=weights,
                                kv=args.kv, context=args.context, concurrency=args.concurrency,
                                gpu_memory_utilization=args.gpu_memory_utilization,
                                max_batched_tokens=args.max_batched_tokens,
                                images_per_prompt=args.images_per_prompt)
        result = planner.plan(inp)
    except ValueError as e:
        print(f"plan: {e}".replace("plan: plan: ", "plan: "))
        return 2
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(planner.format_plan(result))
    return 0


def register(sub) -> None:
    from amd_llama4.platform import DEVICE_SPECS

    p = sub.add_parser("plan", help="what fits on N GPUs: memory per GPU, max context, roofline tokens/s")
    p.add_argument("--model", default="scout",
                   help="preset (scout, maverick) or checkpoint folder (config.json and safetensors headers only)")
    p.add_argument("--gpu", choices=sorted(DEVICE_SPECS), default="mi300x")
    p.add_argument("--num-gpus", type=int, default=8)
    p.add_argument("--weights", choices=("bf16", "fp8", "int4"), default=None,
                   help="default: fp8 for a pre-quantised checkpoint folder, else bf16")
    p.add_argument("--kv", choices=("bf16", "fp8"), default="bf16")
    p.add_argument("--context", type=int, default=131072, help="tokens per sequence")
    p.add_argument("--concurrency", type=int, default=1, help="sequences in flight")
    p.add_argument("--gpu-memory-utilization", type=float, default=0.90)
    p.add_argument("--max-batched-tokens", type=int, default=8192, help="tokens per step (sizes the workspace)")
    p.add_argument("--images-per-prompt", type=int, default=0,
                   help="multimodal models: images per prompt; their tokens (up to (max_patches + 1) x tokens "
                        "per tile each) count in --context")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)
