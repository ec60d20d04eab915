"""`amd-llama4 serve`: the OpenAI-compatible HTTP server (Ray Serve by default, --no-ray for plain
uvicorn). For multi-replica / autoscaled deployments use `serve run deploy/<config>.yaml`."""
from __future__ import annotations

import os


def run(args) -> int:
    from amd_llama4.serve.local import run_server

    options = {k: v for k, v in (("max_queue", args.max_queue), ("request_timeout_s", args.request_timeout),
                                 ("engine_factory", args.engine_factory)) if v is not None}
    engine_args = {"model": args.model, "tensor_parallel_size": args.tensor_parallel_size,
                   "expert_parallel": args.expert_parallel, "dtype": args.dtype,
                   "kv_cache_dtype": args.kv_cache_dtype, "quantization": args.quantization,
                   "max_model_len": args.max_model_len, "max_num_seqs": args.max_num_seqs}
    engine_args = {k: v for k, v in engine_args.items() if v is not None}
    run_server(engine_args, host=args.host, port=args.port,
               api_key=args.api_key or os.environ.get("AMD_LLAMA4_API_KEY") or None,
               use_ray=not args.no_ray, served_model_name=args.served_model_name, **options)
    return 0


def register(sub) -> None:
    # No serving imports here: every `amd-llama4` command builds this parser, and fastapi/ray
    # are optional dependencies.
    p = sub.add_parser("serve", help="OpenAI-compatible HTTP server (/v1/completions, /v1/chat/completions)")
    p.add_argument("--model", required=True, help="checkpoint folder or preset name")
    p.add_argument("--tensor-parallel-size", "--tp", type=int, default=1, help="GPUs per engine")
    p.add_argument("--expert-parallel", action="store_true", help="split MoE experts across TP ranks")
    p.add_argument("--dtype", default=None, help="bfloat16 | float16 | float32 (default: engine's)")
    p.add_argument("--kv-cache-dtype", default=None, help="auto | fp8 (default: engine's)")
    p.add_argument("--quantization", default=None, choices=["fp8"],
                   help="online FP8 weights + activations (pre-quantised checkpoints need no flag)")
    p.add_argument("--max-model-len", type=int, default=None, help="prompt + output tokens per request")
    p.add_argument("--max-num-seqs", type=int, default=None, help="sequences batched per engine step")
    p.add_argument("--host", default="127.0.0.1", help="listen address (0.0.0.0 for all interfaces)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", default=None,
                   help="require `Authorization: Bearer KEY` on /v1/* (default: env AMD_LLAMA4_API_KEY)")
    p.add_argument("--served-model-name", default=None, help="model name clients send (default: --model)")
    p.add_argument("--max-queue", type=int, default=None,
                   help="requests admitted at once; beyond it HTTP 429 with Retry-After (default 256)")
    p.add_argument("--request-timeout", type=float, default=None,
                   help="seconds per request before it is aborted (default 600)")
    p.add_argument("--no-ray", action="store_true", help="plain uvicorn in this process, no Ray")
    p.add_argument("--engine-factory", default=None,
                   help="'module:attr' called with the engine args (default: AsyncEngine.from_config)")
    p.set_defaults(func=run)
