"""Run the OpenAI server on this machine: plain uvicorn (one process, no Ray) or a local Ray
cluster with the Serve deployment (the same path as `serve run deploy/*.yaml`)."""
from __future__ import annotations

import functools
import logging
import time
from typing import Any

from amd_llama4.serve.app import DEFAULT_MAX_QUEUE, DEFAULT_REQUEST_TIMEOUT_S
from amd_llama4.serve.engine_provider import DEFAULT_ENGINE_FACTORY, load_factory

log = logging.getLogger("amd_llama4.serve")

def run_server(engine_args: dict[str, Any], host: str = "127.0.0.1", port: int = 8000,
               api_key: str | None = None, use_ray: bool = True, *, max_queue: int = DEFAULT_MAX_QUEUE,
               request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S, served_model_name: str | None = None,
               engine_factory: str = DEFAULT_ENGINE_FACTORY, limit_mm_per_prompt: Any = None,
               allowed_media_domains: Any = None, max_image_pixels: int | None = None) -> None:
    """Blocks until interrupted. `api_key` None: env AMD_LLAMA4_API_KEY, else no auth."""
    app_options: dict[str, Any] = {"max_queue": max_queue, "request_timeout_s": request_timeout_s,
                                   "served_model_name": served_model_name}
    media = {"limit_mm_per_prompt": limit_mm_per_prompt, "allowed_media_domains": allowed_media_domains,
             "max_image_pixels": max_image_pixels}
    app_options.update({k: v for k, v in media.items() if v is not None})
    if use_ray:
        _run_ray(engine_args, host, port, dict(app_options, api_key=api_key, engine_factory=engine_factory))
    else:
        _run_uvicorn(engine_args, host, port, dict(app_options, api_key=api_key), engine_factory)


def _run_uvicorn(engine_args: dict[str, Any], host: str, port: int, app_options: dict[str, Any],
                 engine_factory: str) -> None:
    import uvicorn

    from amd_llama4.serve.app import build_app
    from amd_llama4.serve.engine_provider import EngineProvider

    factory = functools.partial(load_factory(engine_factory), **engine_args)
    engine = factory()  # load before listening: the port opens only with a working engine
    app = build_app(EngineProvider(factory, engine=engine), **app_options)
    uvicorn.run(app, host=host, port=port, log_level="info", timeout_graceful_shutdown=10)


def _run_ray(engine_args: dict[str, Any], host: str, port: int, app_options: dict[str, Any]) -> None:
    import ray
    from ray import serve

    from amd_llama4.serve.deployment import app_builder

    ray.init(ignore_reinit_error=True)  # joins RAY_ADDRESS's cluster if set, else starts one here
    serve.start(http_options={"host": host, "port": port})
    serve.run(app_builder({**engine_args, **{k: v for k, v in app_options.items() if v is not None}}),
              name="amd-llama4", route_prefix="/")
    log.info("serving on http://%s:%d (Ctrl-C stops)", host, port)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        serve.shutdown()
        ray.shutdown()
