"""The OpenAI-compatible FastAPI app over one AsyncEngine.

`build_app(engine_provider, ...)` is used both by plain uvicorn (serve/local.py) and by the Ray
Serve replica (serve/deployment.py). Request path: Gate (auth, body limit, status metrics) ->
route (serve/handlers_*.py) -> validate/tokenize -> admission slot -> Generation
(serve/generation.py) -> JSON or SSE (serve/handlers_common.py)."""
from __future__ import annotations

import os
from typing import Any, Callable

from fastapi import FastAPI

from amd_llama4.multimodal.media import MediaLimits
from amd_llama4.serve.engine_provider import EngineProvider
from amd_llama4.serve.handlers_chat import add_chat_routes
from amd_llama4.serve.handlers_common import State
from amd_llama4.serve.handlers_completions import add_completion_routes
from amd_llama4.serve.handlers_errors import install_error_handlers
from amd_llama4.serve.handlers_info import add_info_routes
from amd_llama4.serve.metrics import ServeMetrics
from amd_llama4.serve.middleware import Gate
from amd_llama4.serve.tools import check_tool_options

API_KEY_ENV = "AMD_LLAMA4_API_KEY"
DEFAULT_MAX_QUEUE = 256
DEFAULT_REQUEST_TIMEOUT_S = 600.0
DEFAULT_MAX_BODY_BYTES = 8 * 1024 * 1024


def build_app(engine_provider: Callable[[], Any] | EngineProvider, *, api_key: str | None = None,
              max_queue: int = DEFAULT_MAX_QUEUE, request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S,
              max_body_bytes: int = DEFAULT_MAX_BODY_BYTES, served_model_name: str | None = None,
              limit_mm_per_prompt: Any = None, allowed_media_domains: Any = None,
              max_image_pixels: int | None = None, tool_call_parser: str | None = None,
              enable_auto_tool_choice: bool = False) -> FastAPI:
    """`engine_provider`: an EngineProvider, or a callable returning the engine (or an awaitable of
    it), called lazily on the first request and again after the engine is reported dead.
    `api_key` (else env AMD_LLAMA4_API_KEY) makes `Authorization: Bearer <key>` mandatory on /v1/*.
    limit_mm_per_prompt / allowed_media_domains / max_image_pixels: image limits (multimodal/media.py).
    tool_call_parser (llama4_pythonic | llama4_json) + enable_auto_tool_choice: tool_choice "auto"
    (vLLM's --tool-call-parser / --enable-auto-tool-choice); forced tool choices need neither."""
    if max_queue < 1 or request_timeout_s <= 0 or max_body_bytes < 1:
        raise ValueError("build_app: max_queue, request_timeout_s and max_body_bytes must be positive")
    check_tool_options(tool_call_parser, enable_auto_tool_choice)
    provider = engine_provider if isinstance(engine_provider, EngineProvider) else EngineProvider(engine_provider)
    key = api_key if api_key is not None else os.environ.get(API_KEY_ENV) or None
    metrics = ServeMetrics()
    media = MediaLimits.from_options(limit_mm_per_prompt, allowed_media_domains, max_image_pixels)
    state = State(provider, metrics, max_queue=max_queue, request_timeout_s=request_timeout_s,
                  served_model_name=served_model_name, media=media, tool_call_parser=tool_call_parser,
                  enable_auto_tool_choice=bool(enable_auto_tool_choice))

    app = FastAPI(title="amd-llama4 OpenAI-compatible API", version="0.1.0")
    app.state.serve = state
    app.add_middleware(Gate, api_key=key, max_body_bytes=max_body_bytes, metrics=metrics)
    install_error_handlers(app)
    # Registration order fixes the route order in /openapi.json; keep it.
    add_info_routes(app, state)
    add_completion_routes(app, state)
    add_chat_routes(app, state)
    return app
