"""GET /health, /metrics (Prometheus) and /v1/models."""
from __future__ import annotations

import asyncio
import logging

from fastapi import FastAPI
from fastapi.responses import Response

from amd_llama4.serve import protocol as P
from amd_llama4.serve.handlers_common import State, check_token_ids, json_response, tokenize_chat

log = logging.getLogger("amd_llama4.serve")

_HEALTH_TIMEOUT_S = 10.0


# /tokenize and /detokenize answer these besides 200 (for the OpenAPI schema schemathesis checks)
_TOKEN_ROUTE_ERRORS = {code: {"model": P.ErrorResponse} for code in (400, 401, 503)}


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

    # vLLM's /tokenize and /detokenize: no engine request, so no admission slot
    @app.post("/tokenize", response_model=P.TokenizeResponse, responses=_TOKEN_ROUTE_ERRORS)
    async def tokenize(body: P.TokenizeRequest) -> Response:
        engine = await state.engine()
        state.check_model(engine, body.model)
        if body.messages is not None:
            ids = await tokenize_chat(engine, body.template_messages(), body.add_generation_prompt)
        else:
            ids = await asyncio.to_thread(engine.tokenizer.encode, body.prompt, add_bos=body.add_special_tokens)
        return json_response(200, {"count": len(ids), "max_model_len": int(engine.max_model_len),
                                   "tokens": [int(t) for t in ids]})

    @app.post("/detokenize", response_model=P.DetokenizeResponse, responses=_TOKEN_ROUTE_ERRORS)
    async def detokenize(body: P.DetokenizeRequest) -> Response:
        engine = await state.engine()
        state.check_model(engine, body.model)
        check_token_ids(engine, body.tokens, "tokens")
        return json_response(200, {"prompt": await asyncio.to_thread(engine.tokenizer.decode, body.tokens)})
