"""Owns the replica's engine: built lazily, rebuilt after it is reported dead."""
from __future__ import annotations

import asyncio
import importlib
import inspect
import logging
from typing import Any, Callable

log = logging.getLogger("amd_llama4.serve")

DEFAULT_ENGINE_FACTORY = "amd_llama4.engine.async_engine:AsyncEngine.from_config"


def load_factory(spec: str) -> Callable[..., Any]:
    """'package.module:Attr.attr' -> the callable it names (the engine factory option)."""
    module, _, attr = spec.partition(":")
    if not module or not attr:
        raise ValueError(f"engine_factory {spec!r}: expected 'module:attribute'")
    obj: Any = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    if not callable(obj):
        raise TypeError(f"engine_factory {spec!r} is not callable")
    return obj


class EngineProvider:
    """Lazily builds the engine with `factory()` (sync or async); after the app reports it dead,
    the next `get()` builds a new one. A plain callable given to build_app is wrapped in one."""

    def __init__(self, factory: Callable[[], Any], engine: Any = None) -> None:
        self._factory, self._engine = factory, engine
        self._lock = asyncio.Lock()

    def current(self) -> Any:
        return self._engine

    async def get(self) -> Any:
        if self._engine is None:
            async with self._lock:
                if self._engine is None:
                    engine = self._factory()
                    if inspect.isawaitable(engine):
                        engine = await engine
                    self._engine = engine
        return self._engine

    def mark_dead(self, engine: Any) -> None:
        if engine is not None and self._engine is engine:
            log.error("engine marked dead; the next request builds a new one")
            self._engine = None
            shutdown = getattr(engine, "shutdown", None)
            if callable(shutdown):
                try:
                    res = shutdown()
                    if inspect.isawaitable(res):
                        asyncio.ensure_future(res)
                except Exception as e:  # noqa: BLE001 - it is dead already
                    log.warning("shutting down the dead engine: %r", e)
