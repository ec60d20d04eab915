"""Ray Serve deployment: one replica = one AsyncEngine + the OpenAI app (serve/app.py).

Config files use `import_path: amd_llama4.serve.deployment:app_builder` with `args:` (see
deploy/*.yaml and docs/serving.md). The ingress app is built late (`@serve.ingress()` +
`__serve_build_asgi_app__`, Ray >= 2.50) so it closes over this replica's engine, which the
async constructor has already loaded: a replica is READY only with a working engine."""
from __future__ import annotations

import functools
import inspect
import logging
from typing import Any, Callable

from ray import serve

from amd_llama4.serve.app import (DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_QUEUE, DEFAULT_REQUEST_TIMEOUT_S,
                                  build_app)
from amd_llama4.serve.engine_provider import DEFAULT_ENGINE_FACTORY, EngineProvider, load_factory

log = logging.getLogger("amd_llama4.serve")

# args keys that configure the HTTP app; every other key goes to the engine factory.
APP_OPTIONS: dict[str, Callable[[Any], Any]] = {
    "api_key": str, "max_queue": int, "request_timeout_s": float, "max_body_bytes": int,
    "served_model_name": str, "engine_factory": str,
    # images (multimodal/media.py): "image=N" or {"image": N}; "a.com,b.org" or a list; width x height
    "limit_mm_per_prompt": lambda v: v if isinstance(v, dict) else str(v),
    "allowed_media_domains": lambda v: v.replace(",", " ").split() if isinstance(v, str) else list(v),
    "max_image_pixels": int,
    # tool calling: tool_choice "auto" reads the output with this parser (serve/tools/)
    "tool_call_parser": str, "enable_auto_tool_choice": lambda v: _as_bool(v),
}
# `serve run module:app_builder key=value` passes strings; coerce the engine args we know.
_ENGINE_ARG_TYPES: dict[str, Callable[[Any], Any]] = {
    "model": str, "tensor_parallel_size": int, "max_model_len": int, "max_num_seqs": int,
    "max_num_batched_tokens": int, "dtype": str, "device": str, "kv_cache_dtype": str, "quantization": str,
    "gpu_memory_utilization": float, "kv_cache_memory_bytes": int, "accelerator_type": str,
    "mm_encoder_tp_mode": str,
}
# Ray's own headroom over our admission bound, so our 429 (not Ray's queue) answers overload.
_ONGOING_HEADROOM = 16


def _as_bool(v: Any) -> bool:
    if isinstance(v, str):
        if v.lower() in ("1", "true", "yes", "on"):
            return True
        if v.lower() in ("0", "false", "no", "off", ""):
            return False
        raise ValueError(f"not a boolean: {v!r}")
    return bool(v)


def split_args(args: dict[str, Any] | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Ray Serve `args:` -> (engine_args, app_options), with types coerced."""
    engine_args, app_options = {}, {}
    for key, value in (args or {}).items():
        if value is None:
            continue
        if key in APP_OPTIONS:
            app_options[key] = APP_OPTIONS[key](value)
        elif key in ("expert_parallel", "enforce_eager", "enable_prefix_caching"):
            engine_args[key] = _as_bool(value)
        else:
            engine_args[key] = _ENGINE_ARG_TYPES.get(key, lambda x: x)(value)
    if "model" not in engine_args:
        raise ValueError("args.model is required (a checkpoint path or preset name)")
    return engine_args, app_options


@serve.deployment(
    name="LLMServer",
    # Fractional CPUs: on small hosts the proxy, controller, this replica and the engine's
    # tensor-parallel worker actors must all fit (Ray counts logical CPUs).
    ray_actor_options={"num_cpus": 0.5},
    max_ongoing_requests=DEFAULT_MAX_QUEUE + _ONGOING_HEADROOM,
    health_check_period_s=10,
    health_check_timeout_s=60,
    graceful_shutdown_timeout_s=30,
)
@serve.ingress()
class LLMServer:
    async def __init__(self, engine_args: dict[str, Any], app_options: dict[str, Any] | None = None) -> None:
        opts = dict(app_options or {})
        factory = load_factory(opts.pop("engine_factory", None) or DEFAULT_ENGINE_FACTORY)
        self._app_options = {"max_queue": DEFAULT_MAX_QUEUE, "request_timeout_s": DEFAULT_REQUEST_TIMEOUT_S,
                             "max_body_bytes": DEFAULT_MAX_BODY_BYTES, **opts}
        self._provider = EngineProvider(functools.partial(factory, **engine_args))
        await self._provider.get()
        log.info("replica ready: model %s", engine_args.get("model"))

    def __serve_build_asgi_app__(self) -> Any:
        return build_app(self._provider, **self._app_options)

    async def __del__(self) -> None:
        """Replica shutdown: let the engine stop its workers (if it has a shutdown)."""
        engine = self._provider.current() if hasattr(self, "_provider") else None
        shutdown = getattr(engine, "shutdown", None)
        if callable(shutdown):
            res = shutdown()
            if inspect.isawaitable(res):
                await res

    async def check_health(self) -> None:
        """Ray calls this periodically; raising makes Ray replace the replica (a fresh process is
        the reliable way back from a dead GPU worker)."""
        engine = self._provider.current()
        if engine is None:
            raise RuntimeError("the engine died and has not been rebuilt")
        try:
            await engine.check_health()
        except Exception:
            self._provider.mark_dead(engine)
            raise


def app_builder(args: dict[str, Any]) -> Any:
    """Ray Serve application builder (`import_path: amd_llama4.serve.deployment:app_builder`)."""
    engine_args, app_options = split_args(args)
    max_queue = app_options.get("max_queue", DEFAULT_MAX_QUEUE)
    return LLMServer.options(max_ongoing_requests=max_queue + _ONGOING_HEADROOM).bind(engine_args, app_options)
