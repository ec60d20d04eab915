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
    if args.offload_table or args.cpu_offload_experts is not None:
        return _run_offload(args, weights)
    try:
        inp = planner.PlanInput(model=args.model, gpu=args.gpu, num_gpus=args.num_gpus or 8, weights=weights,
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


def _run_offload(args, weights: str) -> int:
    """One GPU + host memory (tools/planner_offload.py): --cpu-offload-experts, or the --offload-table."""
    from amd_llama4.tools import planner_offload as po

    if args.num_gpus not in (None, 1):
        print("plan: --cpu-offload-experts / --offload-table plan one GPU (drop --num-gpus or give 1)")
        return 2
    try:
        def given(v, default):
            return default if v is None else v

        host = dict(host_bandwidth_gb_s=given(args.host_bandwidth, po.DEFAULT_HOST_BANDWIDTH_GB_S),
                    host_efficiency=given(args.host_efficiency, po.DEFAULT_HOST_EFFICIENCY),
                    host_memory_gb=args.host_memory_gb)
        if args.offload_table:
            rows = po.offload_table(args.gpu, args.context, **host)
            text, result = po.format_table(rows), rows
        else:
            result = po.plan_offload(po.OffloadInput(model=args.model, gpu=args.gpu, weights=weights,
                                                     kv=args.kv, context=args.context,
                                                     cpu_offload_experts=args.cpu_offload_experts,
                                                     gpu_memory_utilization=args.gpu_memory_utilization,
                                                     max_batched_tokens=args.max_batched_tokens, **host))
            text = po.format_offload(result)
    except ValueError as e:
        print(f"plan: {e}".replace("plan: plan: ", "plan: "))
        return 2
    print(json.dumps(result, indent=2) if args.json else text)
    return 0


def register(sub) -> None:
    from amd_llama4.platform import DEVICE_SPECS

    p = sub.add_parser("plan", help="what fits on N GPUs: memory per GPU, max context, roofline tokens/s")
    p.add_argument("--model", default="scout",
                   help="preset (scout, maverick) or checkpoint folder (config.json and safetensors headers only)")
    p.add_argument("--gpu", choices=sorted(DEVICE_SPECS), default="mi300x")
    p.add_argument("--num-gpus", type=int, default=None, help="default 8 (1 with --cpu-offload-experts)")
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
    p.add_argument("--cpu-offload-experts", metavar="all|N", default=None,
                   help="one GPU + host memory: routed experts of all / the first N MoE layers in host memory")
    p.add_argument("--offload-table", action="store_true",
                   help="Scout and Maverick x bf16/fp8/int4, with and without offload, on one --gpu")
    p.add_argument("--host-bandwidth", type=float, default=None, metavar="GB/s",
                   help="host memory bandwidth, theoretical (default: 12-channel DDR5-4800 EPYC socket, 460.8)")
    p.add_argument("--host-efficiency", type=float, default=None,
                   help="share of --host-bandwidth the CPU expert kernels stream (default 0.55: STREAM "
                        "fraction x measured kernel share; tools/planner_offload.py)")
    p.add_argument("--host-memory-gb", type=float, default=None, help="host RAM to check the offloaded experts against")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)
