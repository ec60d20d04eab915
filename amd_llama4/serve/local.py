"""Run the OpenAI server on this machine: plain uvicorn (one process, no Ray) or a local Ray
cluster with the Serve deployment (the same path as `serve run deploy/*.yaml`)."""
from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import os
import signal
import threading
import time
from typing import Any

from amd_llama4.serve.app import DEFAULT_MAX_QUEUE, DEFAULT_REQUEST_TIMEOUT_S
from amd_llama4.serve.engine_provider import DEFAULT_ENGINE_FACTORY, load_factory

log = logging.getLogger("amd_llama4.serve")

# Seconds in-flight requests get on a stop (uvicorn's drain; Ray Serve's, then Ray is torn down
# regardless), so Ctrl-C ends the process within 10 s (the deployment's own drain is 30 s).
SHUTDOWN_GRACE_S = 5.0

def run_server(engine_args: dict[str, Any], host: str = "127.0.0.1", port: int = 8000,
               api_key: str | None = None, use_ray: bool = True, *, max_queue: int = DEFAULT_MAX_QUEUE,
               request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S, served_model_name: str | None = None,
               engine_factory: str = DEFAULT_ENGINE_FACTORY, limit_mm_per_prompt: Any = None,
               allowed_media_domains: Any = None, max_image_pixels: int | None = None,
               tool_call_parser: str | None = None, enable_auto_tool_choice: bool = False) -> None:
    """Blocks until interrupted. `api_key` None: env AMD_LLAMA4_API_KEY, else no auth."""
    app_options: dict[str, Any] = {"max_queue": max_queue, "request_timeout_s": request_timeout_s,
                                   "served_model_name": served_model_name}
    media = {"limit_mm_per_prompt": limit_mm_per_prompt, "allowed_media_domains": allowed_media_domains,
             "max_image_pixels": max_image_pixels, "tool_call_parser": tool_call_parser,
             "enable_auto_tool_choice": enable_auto_tool_choice or None}
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
    _stop_on_signals()  # Ctrl-C also while the model loads (uvicorn's own handlers take over later)
    engine = factory()  # load before listening: the port opens only with a working engine
    provider = EngineProvider(factory, engine=engine)
    try:
        uvicorn.run(build_app(provider, **app_options), host=host, port=port, log_level="info",
                    timeout_graceful_shutdown=SHUTDOWN_GRACE_S)
    finally:
        # Stop the engine (its thread, its TP workers) before the interpreter exits: a step still
        # running in the engine thread at exit aborts the process (C++ terminate, status -6).
        _shutdown_engine(provider.current())


def _shutdown_engine(engine: Any) -> None:
    shutdown = getattr(engine, "shutdown", None)
    if callable(shutdown):
        res = shutdown()
        if inspect.isawaitable(res):
            asyncio.run(res)


def _run_ray(engine_args: dict[str, Any], host: str, port: int, app_options: dict[str, Any]) -> None:
    import ray
    from ray import serve

    from amd_llama4.serve.deployment import app_builder

    _stop_on_signals()
    try:
        ray.init(ignore_reinit_error=True)  # joins RAY_ADDRESS's cluster if set, else starts one here
        _stop_on_signals()  # ray.init() replaced SIGTERM's handler with its own
        serve.start(http_options={"host": host, "port": port})
        serve.run(app_builder({**engine_args, **{k: v for k, v in app_options.items() if v is not None}}),
                  name="amd-llama4", route_prefix="/")
        log.info("serving on http://%s:%d (Ctrl-C stops)", host, port)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:  # raised by _stop_on_signals' handler, also during startup
        log.info("stopping: Ray Serve, then Ray")
    finally:
        _shutdown_ray(ray, serve)


def _stop_on_signals() -> None:
    """SIGINT and SIGTERM raise KeyboardInterrupt in the main thread; a second one exits at once.
    Set explicitly: a shell starts background jobs (`make serve &`) with SIGINT ignored, which
    Python keeps, so Ctrl-C / kill -INT never reached the Ray path's loop."""
    def stop(signum: int, frame: Any) -> None:
        signal.signal(signal.SIGINT, force)
        signal.signal(signal.SIGTERM, force)
        raise KeyboardInterrupt(signal.Signals(signum).name)

    def force(signum: int, frame: Any) -> None:
        log.warning("%s while stopping: exiting now", signal.Signals(signum).name)
        os._exit(128 + signum)

    if threading.current_thread() is threading.main_thread():  # signal.signal() fails elsewhere
        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGTERM, stop)


def _shutdown_ray(ray: Any, serve: Any) -> None:
    """serve.shutdown() (replicas stop their engines and TP workers) bounded by
    SHUTDOWN_GRACE_S, then ray.shutdown(), which ends the Ray processes this run started."""
    if ray.is_initialized():  # serve.shutdown() would otherwise start a Ray instance to look for Serve
        done = threading.Thread(target=serve.shutdown, name="serve-shutdown", daemon=True)
        done.start()
        done.join(SHUTDOWN_GRACE_S)
        if done.is_alive():
            log.warning("Ray Serve did not stop within %.0f s; shutting Ray down", SHUTDOWN_GRACE_S)
    ray.shutdown()
