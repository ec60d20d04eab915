"""GET /health, /metrics (Prometheus) and /v1/models."""
from __future__ import annotations

import asyncio
import logging

from fastapi import FastAPI
from fastapi.responses import Response

from amd_llama4.serve import protocol as P
from amd_llama4.serve.handlers_common import State, json_response

log = logging.getLogger("amd_llama4.serve")

_HEALTH_TIMEOUT_S = 10.0


def add_info_routes(app: FastAPI, state: State) -> None:
    provider, metrics = state.provider, state.metrics

    @app.get("/health", response_model=P.HealthResponse, responses={503: {"model": P.HealthResponse}})
    async def health() -> Response:
        try:
            engine = await provider.get()
            await asyncio.wait_for(engine.check_health(), _HEALTH_TIMEOUT_S)
        except Exception as e:  # noqa: BLE001 - any failure means unhealthy
            provider.mark_dead(provider.current())
            return json_response(503, {"status": "unhealthy", "detail": type(e).__name__})
        return json_response(200, {"status": "ok", "detail": None})

    @app.get("/metrics", response_class=Response, responses={200: {"content": {"text/plain": {}}}})
    async def prom_metrics() -> Response:
        engine = provider.current()
        if engine is not None:
            try:
                metrics.update_engine(engine.stats())
            except Exception as e:  # noqa: BLE001 - a scrape must not fail on engine stats
                log.debug("engine stats: %r", e)
        data, ctype = metrics.render()
        return Response(data, media_type=ctype)

    @app.get("/v1/models", response_model=P.ModelList, responses={401: {"model": P.ErrorResponse},
                                                                  503: {"model": P.ErrorResponse}})
    async def list_models() -> Response:
        engine = await state.engine()
        card = P.ModelCard(id=state.model_name(engine), max_model_len=int(engine.max_model_len))
        return json_response(200, P.ModelList(data=[card]).model_dump(mode="json"))
