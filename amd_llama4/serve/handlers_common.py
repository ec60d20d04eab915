"""What the route handlers share: per-app state and admission, request validation/tokenisation,
the engine request, and the JSON-or-SSE response tail (serve/handlers_*.py use these)."""
from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any, AsyncIterator, Callable

import anyio
from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from amd_llama4.multimodal.media import MediaError, MediaLimits, load_image
from amd_llama4.serve import protocol as P
from amd_llama4.serve.engine_provider import EngineProvider
from amd_llama4.serve.generation import ClientGone, Generation
from amd_llama4.serve.metrics import ServeMetrics
from amd_llama4.serve.protocol import APIError, bad_request

log = logging.getLogger("amd_llama4.serve")

_THREAD_TOKENIZE_CHARS = 20_000  # tokenize longer prompts off the event loop


def json_response(status: int, body: Any, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(body, status_code=status, headers=headers)


class Slot:
    def __init__(self, state: "State") -> None:
        self.state, self.held = state, True

    def release(self) -> None:
        if self.held:
            self.held = False
            self.state.in_flight -= 1
            self.state.metrics.in_flight.set(self.state.in_flight)


class State:
    """One app's engine provider, metrics, admission counter and request options."""

    def __init__(self, provider: EngineProvider, metrics: ServeMetrics, *, max_queue: int,
                 request_timeout_s: float, served_model_name: str | None, media: MediaLimits | None = None,
                 tool_call_parser: str | None = None, enable_auto_tool_choice: bool = False) -> None:
        self.provider, self.metrics = provider, metrics
        # --tool-call-parser / --enable-auto-tool-choice: how tool_choice "auto" output is read
        self.tool_call_parser, self.enable_auto_tool_choice = tool_call_parser, enable_auto_tool_choice
        self.max_queue, self.request_timeout_s = max_queue, request_timeout_s
        self.served_model_name = served_model_name
        self.media = media or MediaLimits()
        self.in_flight = 0

    def admit(self) -> Slot:
        """Bounded admission per replica: beyond max_queue in-flight requests, 429 at once
        rather than an unbounded queue that turns into timeouts."""
        if self.in_flight >= self.max_queue:
            self.metrics.rejected.inc()
            raise APIError(429, f"server busy: {self.in_flight} requests in flight; retry later",
                           type="rate_limit_error", code="server_overloaded", headers={"Retry-After": "1"})
        self.in_flight += 1
        self.metrics.in_flight.set(self.in_flight)
        return Slot(self)

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


# ---- request: validation, tokenisation, the engine request ----

def _vocab_size(engine: Any) -> int | None:
    tok = engine.tokenizer
    for cand in (getattr(tok, "vocab_size", None), getattr(engine, "vocab_size", None)):
        if isinstance(cand, int) and cand > 0:
            return cand
    try:
        return len(tok) or None
    except TypeError:
        return None


def check_token_ids(engine: Any, ids: list[int], param: str) -> None:
    vocab = _vocab_size(engine)
    if vocab is not None and any(t >= vocab for t in ids):
        raise bad_request(f"{param}: token ids must be < vocab size {vocab}", param)


async def tokenize_prompt(engine: Any, prompt: Any) -> list[int]:
    if isinstance(prompt, list):
        check_token_ids(engine, prompt, "prompt")
        return list(prompt)
    if len(prompt) > _THREAD_TOKENIZE_CHARS:
        return list(await asyncio.to_thread(engine.tokenizer.encode, prompt, add_bos=True))
    return list(engine.tokenizer.encode(prompt, add_bos=True))


async def tokenize_chat(engine: Any, messages: list[dict[str, Any]], add_generation_prompt: bool = True,
                        tools: list[dict[str, Any]] | None = None) -> list[int]:
    tok = engine.tokenizer
    try:
        extra = {"tools": tools} if tools else {}  # the chat template lists them
        out = tok.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, tokenize=True, **extra)
        if isinstance(out, str):  # the template already holds the BOS token
            out = tok.encode(out, add_bos=False)
    except Exception as e:  # noqa: BLE001 - template/message errors are the client's
        raise bad_request(f"messages: {str(e)[:500] or type(e).__name__}", "messages") from None
    return list(out)


async def load_images(limits: MediaLimits, urls: list[str]) -> list[Any]:
    """The request's image_url parts as RGB PIL images, decoded off the event loop. Every media
    problem is the client's: 400 naming it."""
    if len(urls) > limits.limit_images:
        raise bad_request(f"messages: {len(urls)} images in one prompt; this server accepts at most "
                          f"{limits.limit_images} (--limit-mm-per-prompt image=N)", "messages", "too_many_images")
    images = []
    for i, url in enumerate(urls):
        try:
            images.append(await asyncio.to_thread(load_image, url, limits))
        except MediaError as e:
            raise bad_request(f"messages: image {i}: {e}", "messages", "invalid_image") from None
    return images


class _EngineWithImages:
    """The engine as one request with images sees it: generate() also hands over the images
    (Generation calls engine.generate(ids, params, request_id)); everything else is the engine's."""

    def __init__(self, engine: Any, images: list[Any]) -> None:
        self._engine, self._mm = engine, {"image": images}

    def generate(self, prompt: Any, params: Any, request_id: str) -> Any:
        return self._engine.generate(prompt, params, request_id, multi_modal_data=self._mm)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)


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


def _params(engine: Any, body: P._SamplingFields, prompt_len: int, requested: int | None,
            logprobs: int | None, prompt_logprobs: int | None) -> Any:
    if body.stop_token_ids:
        check_token_ids(engine, body.stop_token_ids, "stop_token_ids")
    if body.logit_bias:
        check_token_ids(engine, [int(k) for k in body.logit_bias], "logit_bias")
    return body.to_sampling_params(_max_tokens(engine, prompt_len, requested), logprobs, prompt_logprobs)


async def begin(state: State, body: P._SamplingFields, tokenize: Callable[[Any], Any], requested: int | None,
                logprobs: int | None, id_prefix: str, image_urls: list[str] | None = None,
                prompt_logprobs: int | None = None) -> tuple[Slot, Any, str, Generation]:
    """Admission, engine, model check, images, tokenisation and the engine request; the slot is
    released on any failure before the request exists. With images the prompt holds one `<|image|>`
    per image; the engine expands them (so it checks the expanded length against max_model_len)."""
    slot = state.admit()
    try:
        arrival = time.monotonic()
        engine = await state.engine()
        model = state.check_model(engine, body.model)
        images = await load_images(state.media, image_urls) if image_urls else []
        prompt_ids = await tokenize(engine)
        params = _params(engine, body, len(prompt_ids), requested, logprobs,
                         body.prompt_logprobs if prompt_logprobs is None else prompt_logprobs)
        gen = Generation(_EngineWithImages(engine, images) if images else engine, prompt_ids, params,
                         P.random_id(id_prefix), deadline=arrival + state.request_timeout_s, arrival=arrival,
                         metrics=state.metrics, on_engine_dead=lambda _: state.provider.mark_dead(engine))
        return slot, engine, model, gen
    except BaseException:
        slot.release()
        raise


# ---- response: JSON or SSE ----

def sse(obj: Any) -> str:
    return f"data: {json.dumps(obj, separators=(',', ':'))}\n\n"


DONE = "data: [DONE]\n\n"
_STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def error_chunk(e: APIError) -> str:
    return sse(e.body())


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


async def respond(request: Request, body: P._SamplingFields, slot: Slot, gen: Generation,
                  render_final: Callable, stream_chunks: Callable) -> Response:
    """Shared tail of both generation endpoints. Owns `gen` and `slot` from here on."""
    return await respond_many(request, body, [(slot, gen)], lambda finals: render_final(finals[0]),
                              lambda firsts: stream_chunks(firsts[0]))


async def respond_many(request: Request, body: P._SamplingFields, started: list[tuple[Slot, Generation]],
                       render_final: Callable, stream_chunks: Callable) -> Response:
    """`respond` for one or more engine requests (a batch of prompts), run concurrently;
    render_final / stream_chunks get one final / first output per request, in order. Owns every
    generation and slot from here on."""
    gens = [g for _, g in started]
    handed_off = False

    async def cleanup() -> None:
        for slot, gen in started:
            try:
                await gen.close()
            finally:
                slot.release()

    async def final(gen: Generation) -> Any:
        return await gen.run_to_end() if not gen.done else gen.result()

    try:
        firsts = await gens[0].watched(request, asyncio.gather(*(g.next() for g in gens)))
        if body.stream:
            handed_off = True
            headers = dict(_STREAM_HEADERS, **{"X-Request-Id": gens[0].request_id})
            return _EngineStream(stream_chunks(firsts), cleanup, headers)
        finals = await gens[0].watched(request, asyncio.gather(*(final(g) for g in gens)))
        return JSONResponse(render_final(finals), headers={"X-Request-Id": gens[0].request_id})
    except ClientGone:
        return Response(status_code=499)
    finally:
        if not handed_off:
            await cleanup()


async def merged(streams: list[AsyncIterator[str]]) -> AsyncIterator[str]:
    """Items of several async iterators as they come (one task each); the tasks end with the merge."""
    if len(streams) == 1:
        async for item in streams[0]:
            yield item
        return
    queue: asyncio.Queue = asyncio.Queue()
    end = object()

    async def pump(it: AsyncIterator[str]) -> None:
        try:
            async for item in it:
                await queue.put(item)
        finally:
            await queue.put(end)

    tasks = [asyncio.ensure_future(pump(it)) for it in streams]
    try:
        left = len(tasks)
        while left:
            item = await queue.get()
            if item is end:
                left -= 1
            else:
                yield item
        for t in tasks:
            t.result()  # re-raise a failure of a pump
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def deltas(gen: Generation, first: Any) -> AsyncIterator[tuple[Any, int]]:
    """(a choice's new part: a DELTA CompletionOutput, that choice's text length already sent) per
    engine output, until the request is done; an unfinished end is a server error."""
    sent: dict[int, int] = {}
    out, finished = first, False
    while out is not None:
        finished = out.finished
        for c in out.outputs:
            offset = sent.get(c.index, 0)
            yield c, offset
            sent[c.index] = offset + len(c.text)
        if gen.done:
            break
        out = await gen.next()
    if not finished:
        raise APIError(500, "the engine ended the request without a result", type="server_error")


def usage_sum(parts: list[dict[str, int]]) -> dict[str, int]:
    """Usage of a batch of prompts: every field summed."""
    return {k: sum(u[k] for u in parts) for k in ("prompt_tokens", "completion_tokens", "total_tokens")}


def usage(gen: Generation, final: Any = None) -> dict[str, int]:
    """The prompt once (as the engine ran it: with images, their expanded tokens); completion tokens
    summed over the returned choices."""
    n = sum(len(c.token_ids) for c in final.outputs) if final is not None else gen.num_generated
    ran = final if final is not None else gen.acc.request
    prompt = len(ran.prompt_token_ids) if ran is not None and ran.prompt_token_ids else gen.prompt_len
    return {"prompt_tokens": prompt, "completion_tokens": n, "total_tokens": prompt + n}


def openapi_responses(model: Any) -> dict:
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
