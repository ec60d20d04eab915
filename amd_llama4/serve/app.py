"""The OpenAI-compatible FastAPI app over one AsyncEngine.

`build_app(engine_provider, ...)` is used both by plain uvicorn (serve/local.py) and by the Ray
Serve replica (serve/deployment.py). Request path: Gate (auth, body limit, status metrics) ->
route -> validate/tokenize -> admission slot -> Generation (serve/generation.py) -> JSON or SSE."""
from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from typing import Any, AsyncIterator, Callable

import anyio
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from amd_llama4.serve import protocol as P
from amd_llama4.serve.engine_provider import EngineProvider
from amd_llama4.serve.generation import ClientGone, Generation, TokenText, chat_logprobs, completion_logprobs
from amd_llama4.serve.metrics import ServeMetrics
from amd_llama4.serve.middleware import Gate
from amd_llama4.serve.protocol import APIError, bad_request, error_body

log = logging.getLogger("amd_llama4.serve")

API_KEY_ENV = "AMD_LLAMA4_API_KEY"
DEFAULT_MAX_QUEUE = 256
DEFAULT_REQUEST_TIMEOUT_S = 600.0
DEFAULT_MAX_BODY_BYTES = 8 * 1024 * 1024
_THREAD_TOKENIZE_CHARS = 20_000  # tokenize longer prompts off the event loop
_HEALTH_TIMEOUT_S = 10.0


def _json(status: int, body: Any, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(body, status_code=status, headers=headers)


class _Slot:
    def __init__(self, state: "_State") -> None:
        self.state, self.held = state, True

    def release(self) -> None:
        if self.held:
            self.held = False
            self.state.in_flight -= 1
            self.state.metrics.in_flight.set(self.state.in_flight)


class _State:
    def __init__(self, provider: EngineProvider, metrics: ServeMetrics, *, max_queue: int,
                 request_timeout_s: float, served_model_name: str | None) -> None:
        self.provider, self.metrics = provider, metrics
        self.max_queue, self.request_timeout_s = max_queue, request_timeout_s
        self.served_model_name = served_model_name
        self.in_flight = 0

    def admit(self) -> _Slot:
        """Bounded admission per replica: beyond max_queue in-flight requests, 429 at once
        rather than an unbounded queue that turns into timeouts."""
        if self.in_flight >= self.max_queue:
            self.metrics.rejected.inc()
            raise APIError(429, f"server busy: {self.in_flight} requests in flight; retry later",
                           type="rate_limit_error", code="server_overloaded", headers={"Retry-After": "1"})
        self.in_flight += 1
        self.metrics.in_flight.set(self.in_flight)
        return _Slot(self)

    async def engine(self) -> Any:
        try:
            return await self.provider.get()
        except Exception as e:  # noqa: BLE001 - a failed (re)build is the server's problem
            log.error("engine unavailable: %r", e)
            raise APIError(503, "the model engine is unavailable; retry later", type="server_error",
                           code="engine_unavailable", headers={"Retry-After": "5"}) from None

    def model_name(self, engine: Any) -> str:
        return self.served_model_name or str(getattr(engine, "model_name", "model"))

    def check_model(self, engine: Any, requested: str | None) -> str:
        name = self.model_name(engine)
        if requested is not None and requested not in (name, str(getattr(engine, "model_name", name))):
            raise APIError(400, f"model {requested[:200]!r} is not served here; this server serves {name!r}",
                           param="model", code="model_not_found")
        return name


def _vocab_size(engine: Any) -> int | None:
    tok = engine.tokenizer
    for cand in (getattr(tok, "vocab_size", None), getattr(engine, "vocab_size", None)):
        if isinstance(cand, int) and cand > 0:
            return cand
    try:
        return len(tok) or None
    except TypeError:
        return None


def _check_token_ids(engine: Any, ids: list[int], param: str) -> None:
    vocab = _vocab_size(engine)
    if vocab is not None and any(t >= vocab for t in ids):
        raise bad_request(f"{param}: token ids must be < vocab size {vocab}", param)


async def _tokenize_prompt(engine: Any, prompt: Any) -> list[int]:
    if isinstance(prompt, list):
        _check_token_ids(engine, prompt, "prompt")
        return list(prompt)
    if len(prompt) > _THREAD_TOKENIZE_CHARS:
        return list(await asyncio.to_thread(engine.tokenizer.encode, prompt, add_bos=True))
    return list(engine.tokenizer.encode(prompt, add_bos=True))


async def _tokenize_chat(engine: Any, messages: list[dict[str, Any]]) -> list[int]:
    tok = engine.tokenizer
    try:
        out = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        if isinstance(out, str):  # the template already holds the BOS token
            out = tok.encode(out, add_bos=False)
    except Exception as e:  # noqa: BLE001 - template/message errors are the client's
        raise bad_request(f"messages: {str(e)[:500] or type(e).__name__}", "messages") from None
    return list(out)


def _max_tokens(engine: Any, prompt_len: int, requested: int | None) -> int:
    max_len = int(engine.max_model_len)
    if prompt_len == 0:
        raise bad_request("the prompt is empty", "prompt")
    if prompt_len >= max_len:
        raise bad_request(f"the prompt has {prompt_len} tokens; this model's maximum context length is "
                          f"{max_len} tokens (prompt + generated)", "prompt", "context_length_exceeded")
    if requested is None:
        return max_len - prompt_len
    if prompt_len + requested > max_len:
        raise bad_request(f"this model's maximum context length is {max_len} tokens; the prompt has "
                          f"{prompt_len} and max_tokens asks for {requested}", "max_tokens",
                          "context_length_exceeded")
    return requested


def _sse(obj: Any) -> str:
    return f"data: {json.dumps(obj, separators=(',', ':'))}\n\n"


_DONE = "data: [DONE]\n\n"


class _EngineStream(StreamingResponse):
    """SSE response that always runs `on_close` (abort in the engine, free the admission slot),
    whether the stream ended, failed, or the client went away mid-stream."""

    def __init__(self, content: AsyncIterator[str], on_close: Callable[[], Any], headers: dict[str, str]):
        super().__init__(content, media_type="text/event-stream", headers=headers)
        self._content, self._on_close = content, on_close

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with anyio.CancelScope(shield=True):
                try:
                    await self._content.aclose()  # type: ignore[attr-defined]
                finally:
                    await self._on_close()


_STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


async def _respond(request: Request, state: _State, body: P._SamplingFields, slot: _Slot,
                   gen: Generation, render_final: Callable, stream_chunks: Callable) -> Response:
    """Shared tail of both endpoints. Owns `gen` and `slot` from here on."""
    handed_off = False

    async def cleanup() -> None:
        await gen.close()
        slot.release()

    try:
        first = await gen.watched(request, gen.next())
        if body.stream:
            handed_off = True
            headers = dict(_STREAM_HEADERS, **{"X-Request-Id": gen.request_id})
            return _EngineStream(stream_chunks(first), cleanup, headers)
        final = first
        if not gen.done:
            final = await gen.watched(request, gen.run_to_end())
        elif final is None:
            raise APIError(500, "the engine ended the request without a result", type="server_error")
        return JSONResponse(render_final(final), headers={"X-Request-Id": gen.request_id})
    except ClientGone:
        return Response(status_code=499)
    finally:
        if not handed_off:
            await cleanup()


def _is_finished(out: Any) -> bool:
    return out is not None and bool(out.finished or (out.outputs and out.outputs[0].finished))


def _usage(gen: Generation, out: Any) -> dict[str, int]:
    n = len(out.outputs[0].token_ids) if out is not None and out.outputs else gen.num_generated
    return {"prompt_tokens": gen.prompt_len, "completion_tokens": n, "total_tokens": gen.prompt_len + n}


def _error_chunk(e: APIError) -> str:
    return _sse(e.body())


def _responses(model: Any) -> dict:
    """OpenAPI `responses` for a generation endpoint: JSON or SSE 200, and every error status."""
    errors = {code: {"model": P.ErrorResponse, "description": why} for code, why in (
        (400, "invalid request"), (401, "missing or wrong API key"), (413, "body too large"),
        (429, "server busy (Retry-After)"), (499, "client closed the request"),
        (500, "engine failure"), (503, "engine unavailable"), (504, "request timed out"))}
    # OpenAPI < 3.2: an event-stream `schema` describes one event; `data` is a JSON chunk or [DONE].
    event = {"type": "object", "required": ["data"],
             "properties": {"data": {"type": "string"}, "event": {"type": "string"}}}
    return {200: {"model": model, "content": {"text/event-stream": {"schema": event}},
                  "description": "JSON, or an SSE stream when stream=true"}, **errors}


def build_app(engine_provider: Callable[[], Any] | EngineProvider, *, api_key: str | None = None,
              max_queue: int = DEFAULT_MAX_QUEUE, request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S,
              max_body_bytes: int = DEFAULT_MAX_BODY_BYTES, served_model_name: str | None = None) -> FastAPI:
    """`engine_provider`: an EngineProvider, or a callable returning the engine (or an awaitable of
    it), called lazily on the first request and again after the engine is reported dead.
    `api_key` (else env AMD_LLAMA4_API_KEY) makes `Authorization: Bearer <key>` mandatory on /v1/*."""
    if max_queue < 1 or request_timeout_s <= 0 or max_body_bytes < 1:
        raise ValueError("build_app: max_queue, request_timeout_s and max_body_bytes must be positive")
    provider = engine_provider if isinstance(engine_provider, EngineProvider) else EngineProvider(engine_provider)
    key = api_key if api_key is not None else os.environ.get(API_KEY_ENV) or None
    metrics = ServeMetrics()
    state = _State(provider, metrics, max_queue=max_queue, request_timeout_s=request_timeout_s,
                   served_model_name=served_model_name)

    app = FastAPI(title="amd-llama4 OpenAI-compatible API", version="0.1.0")
    app.state.serve = state
    app.add_middleware(Gate, api_key=key, max_body_bytes=max_body_bytes, metrics=metrics)
    _install_error_handlers(app)

    @app.get("/health", response_model=P.HealthResponse, responses={503: {"model": P.HealthResponse}})
    async def health() -> Response:
        try:
            engine = await provider.get()
            await asyncio.wait_for(engine.check_health(), _HEALTH_TIMEOUT_S)
        except Exception as e:  # noqa: BLE001 - any failure means unhealthy
            provider.mark_dead(provider.current())
            return _json(503, {"status": "unhealthy", "detail": type(e).__name__})
        return _json(200, {"status": "ok", "detail": None})

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
        return _json(200, P.ModelList(data=[card]).model_dump(mode="json"))

    @app.post("/v1/completions", responses=_responses(P.CompletionResponse))
    async def completions(request: Request, body: P.CompletionRequest) -> Response:
        slot, engine, model, gen = await _begin(state, body, lambda e: _tokenize_prompt(e, body.prompt),
                                                body.max_tokens, body.logprobs, "cmpl")
        text_of = TokenText(engine.tokenizer)
        created = int(time.time())

        def choice(out: Any, text: str, lps: Any, finish: Any) -> dict:
            c = out.outputs[0] if out.outputs else None
            return {"index": 0, "text": text, "logprobs": lps, "finish_reason": finish,
                    "stop_reason": c.stop_reason if c is not None and finish else None}

        def render_final(out: Any) -> dict:
            c = out.outputs[0]
            lps = (completion_logprobs(c.logprobs or [], text_of, 0)
                   if body.logprobs is not None else None)
            return P.CompletionResponse(id=gen.request_id, created=created, model=model,
                                        choices=[choice(out, c.text, lps, c.finish_reason)],
                                        usage=_usage(gen, out)).model_dump(mode="json")

        async def stream_chunks(first: Any) -> AsyncIterator[str]:
            last = first
            try:
                async for out, delta, new_lps, sent_text, finish in _deltas(gen, first):
                    last = out
                    lps = (completion_logprobs(new_lps, text_of, sent_text)
                           if body.logprobs is not None else None)
                    if delta or finish or new_lps:
                        chunk = {"id": gen.request_id, "object": "text_completion", "created": created,
                                 "model": model, "choices": [choice(out, delta, lps, finish)]}
                        if body.include_usage():
                            chunk["usage"] = None
                        yield _sse(chunk)
                if body.include_usage():
                    yield _sse({"id": gen.request_id, "object": "text_completion", "created": created,
                                "model": model, "choices": [], "usage": _usage(gen, last)})
            except APIError as e:
                yield _error_chunk(e)
            yield _DONE

        return await _respond(request, state, body, slot, gen, render_final, stream_chunks)

    @app.post("/v1/chat/completions", responses=_responses(P.ChatCompletionResponse))
    async def chat_completions(request: Request, body: P.ChatCompletionRequest) -> Response:
        top = (body.top_logprobs or 0) if body.logprobs else None
        slot, engine, model, gen = await _begin(state, body, lambda e: _tokenize_chat(e, body.template_messages()),
                                                body.requested_max_tokens(), top, "chatcmpl")
        text_of = TokenText(engine.tokenizer)
        created = int(time.time())

        def render_final(out: Any) -> dict:
            c = out.outputs[0]
            lps = chat_logprobs(c.logprobs or [], text_of) if body.logprobs else None
            return P.ChatCompletionResponse(
                id=gen.request_id, created=created, model=model, usage=_usage(gen, out),
                choices=[{"index": 0, "message": {"role": "assistant", "content": c.text}, "logprobs": lps,
                          "finish_reason": c.finish_reason, "stop_reason": c.stop_reason}],
            ).model_dump(mode="json")

        def chunk(delta: dict, lps: Any, finish: Any, usage: Any = None, choices: bool = True) -> str:
            obj: dict[str, Any] = {"id": gen.request_id, "object": "chat.completion.chunk", "created": created,
                                   "model": model,
                                   "choices": [{"index": 0, "delta": delta, "logprobs": lps,
                                                "finish_reason": finish}] if choices else []}
            if body.include_usage():
                obj["usage"] = usage
            return _sse(obj)

        async def stream_chunks(first: Any) -> AsyncIterator[str]:
            last = first
            try:
                yield chunk({"role": "assistant", "content": ""}, None, None)
                async for out, delta, new_lps, _, finish in _deltas(gen, first):
                    last = out
                    lps = chat_logprobs(new_lps, text_of) if body.logprobs else None
                    if delta or new_lps:
                        yield chunk({"content": delta}, lps, None)
                    if finish:
                        yield chunk({}, None, finish)
                if body.include_usage():
                    yield chunk({}, None, None, usage=_usage(gen, last), choices=False)
            except APIError as e:
                yield _error_chunk(e)
            yield _DONE

        return await _respond(request, state, body, slot, gen, render_final, stream_chunks)

    return app


async def _begin(state: _State, body: P._SamplingFields, tokenize: Callable[[Any], Any], requested: int | None,
                 logprobs: int | None, id_prefix: str) -> tuple[_Slot, Any, str, Generation]:
    """Admission, engine, model check, tokenisation and the engine request; the slot is released on
    any failure before the request exists."""
    slot = state.admit()
    try:
        arrival = time.monotonic()
        engine = await state.engine()
        model = state.check_model(engine, body.model)
        prompt_ids = await tokenize(engine)
        params = _params(engine, body, len(prompt_ids), requested, logprobs)
        return slot, engine, model, _start(state, engine, prompt_ids, params, P.random_id(id_prefix), arrival)
    except BaseException:
        slot.release()
        raise


async def _deltas(gen: Generation, first: Any) -> AsyncIterator[tuple[Any, str, list, int, Any]]:
    """(output, new text, new logprob entries, text length already sent, finish_reason) per engine
    output, until the request is done; an unfinished end is a server error."""
    sent_text, sent_lps, out, last = 0, 0, first, first
    while out is not None:
        last = out
        c = out.outputs[0] if out.outputs else None
        if c is not None:
            yield out, c.text[sent_text:], (c.logprobs or [])[sent_lps:], sent_text, c.finish_reason
            sent_text, sent_lps = len(c.text), len(c.logprobs or [])
        if gen.done:
            break
        out = await gen.next()
    if not _is_finished(last):
        raise APIError(500, "the engine ended the request without a result", type="server_error")


def _params(engine: Any, body: P._SamplingFields, prompt_len: int, requested: int | None,
            logprobs: int | None) -> Any:
    if body.stop_token_ids:
        _check_token_ids(engine, body.stop_token_ids, "stop_token_ids")
    if body.logit_bias:
        _check_token_ids(engine, [int(k) for k in body.logit_bias], "logit_bias")
    return body.to_sampling_params(_max_tokens(engine, prompt_len, requested), logprobs)


def _start(state: _State, engine: Any, prompt_ids: list[int], params: Any, request_id: str,
           arrival: float) -> Generation:
    return Generation(engine, prompt_ids, params, request_id, deadline=arrival + state.request_timeout_s,
                      arrival=arrival, metrics=state.metrics, on_engine_dead=state.provider.mark_dead)


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(_: Request, e: APIError) -> Response:
        return _json(e.status, e.body(), e.headers or None)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, e: RequestValidationError) -> Response:
        errors = e.errors()
        first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
        loc = [str(x) for x in first.get("loc", ()) if x != "body"]
        param = ".".join(loc) or None
        if first.get("type") == "json_invalid":
            msg, param = "the request body is not valid JSON", None
        elif loc[:1] == ["prompt"] and len(loc) > 1 and not loc[1].isdigit():  # union member tags
            msg, param = "prompt: must be a string, a list of token ids, or a list of one of those", "prompt"
            errors = [first]
        else:
            msg = f"{param}: {first.get('msg')}" if param else str(first.get("msg"))
            msg = msg.replace("Value error, ", "")
        if len(errors) > 1:
            msg += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
        return _json(400, error_body(msg, "invalid_request_error", param, "invalid_value"))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, e: StarletteHTTPException) -> Response:
        kind = {404: "not_found_error", 405: "invalid_request_error"}.get(e.status_code, "invalid_request_error")
        return _json(e.status_code, error_body(str(e.detail), kind, None, None), dict(e.headers or {}))

    @app.exception_handler(Exception)
    async def _internal(_: Request, e: Exception) -> Response:
        log.exception("internal error: %s", type(e).__name__)
        return _json(500, error_body("internal server error", "server_error", None, None))
