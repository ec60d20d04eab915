"""`amd-llama4 serve`: the OpenAI-compatible HTTP server (Ray Serve by default, --no-ray for plain
uvicorn). For multi-replica / autoscaled deployments use `serve run deploy/<config>.yaml`."""
from __future__ import annotations

import os


def run(args) -> int:
    from amd_llama4.commands._engine_flags import engine_kwargs
    from amd_llama4.serve.local import run_server

    options = {k: v for k, v in (("max_queue", args.max_queue), ("request_timeout_s", args.request_timeout),
                                 ("engine_factory", args.engine_factory),
                                 ("limit_mm_per_prompt", args.limit_mm_per_prompt),
                                 ("allowed_media_domains", args.allowed_media_domains),
                                 ("max_image_pixels", args.max_image_pixels),
                                 ("tool_call_parser", args.tool_call_parser),
                                 ("enable_auto_tool_choice", args.enable_auto_tool_choice or None)) if v is not None}
    if args.enable_auto_tool_choice and args.tool_call_parser is None:  # as vLLM: before the model loads
        raise SystemExit("amd-llama4 serve: --enable-auto-tool-choice needs --tool-call-parser")
    if any(k in options for k in _MEDIA_OPTIONS):  # a bad value fails here, before the model loads
        from amd_llama4.multimodal.media import MediaLimits

        MediaLimits.from_options(**{k: options[k] for k in _MEDIA_OPTIONS if k in options})
    engine_args = {"model": args.model, **engine_kwargs(args)}
    run_server(engine_args, host=args.host, port=args.port,
               api_key=args.api_key or os.environ.get("AMD_LLAMA4_API_KEY") or None,
               use_ray=not args.no_ray, served_model_name=args.served_model_name, **options)
    return 0


_MEDIA_OPTIONS = ("limit_mm_per_prompt", "allowed_media_domains", "max_image_pixels")


def register(sub) -> None:
    # No serving imports here: every `amd-llama4` command builds this parser, and fastapi/ray
    # are optional dependencies.
    from amd_llama4.commands._engine_flags import add_engine_flags

    p = sub.add_parser("serve", help="OpenAI-compatible HTTP server (/v1/completions, /v1/chat/completions)")
    p.add_argument("--model", required=True, help="checkpoint folder or preset name")
    add_engine_flags(p)  # --device, --dtype, --gpu-memory-utilization, ... (vLLM's names)
    p.add_argument("--host", default="127.0.0.1", help="listen address (0.0.0.0 for all interfaces)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", default=None,
                   help="require `Authorization: Bearer KEY` on /v1/* (default: env AMD_LLAMA4_API_KEY)")
    p.add_argument("--served-model-name", default=None, help="model name clients send (default: --model)")
    p.add_argument("--max-queue", type=int, default=None,
                   help="requests admitted at once; beyond it HTTP 429 with Retry-After (default 256)")
    p.add_argument("--request-timeout", type=float, default=None,
                   help="seconds per request before it is aborted (default 600)")
    p.add_argument("--limit-mm-per-prompt", default=None, metavar="image=N",
                   help="most images per prompt; more is HTTP 400 (default image=8)")
    p.add_argument("--allowed-media-domains", nargs="+", default=None, metavar="HOST",
                   help="hosts that http(s) image URLs may name (default: none, only data: URLs)")
    p.add_argument("--max-image-pixels", type=int, default=None,
                   help="largest decoded image, width x height; larger is HTTP 400 (default 67108864 = 8192^2)")
    p.add_argument("--tool-call-parser", default=None, choices=["llama4_pythonic", "llama4_json"],
                   help="how tool_choice=auto output becomes tool_calls: Llama 4's pythonic list or its JSON form")
    p.add_argument("--enable-auto-tool-choice", action="store_true",
                   help="allow tool_choice=auto (the default when a request has tools); needs --tool-call-parser")
    p.add_argument("--no-ray", action="store_true", help="plain uvicorn in this process, no Ray")
    p.add_argument("--engine-factory", default=None,
                   help="'module:attr' called with the engine args (default: AsyncEngine.from_config)")
    p.set_defaults(func=run)
