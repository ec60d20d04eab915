"""One engine request seen from the HTTP side: step with a deadline, map engine failures to
APIError, record metrics, and always abort in the engine when the request ends early."""
from __future__ import annotations

import asyncio
import logging
import math
import time
from typing import Any, Callable

import anyio

from amd_llama4.engine.outputs import Logprob, OutputAccumulator, RequestOutput
from amd_llama4.engine.sampling_params import SamplingParams
from amd_llama4.serve.metrics import ServeMetrics
from amd_llama4.serve.protocol import APIError

log = logging.getLogger("amd_llama4.serve")

_DISCONNECT_POLL_S = 0.2
_ABORT_TIMEOUT_S = 10.0


class ClientGone(Exception):
    """The HTTP client disconnected before the response was complete."""


class Generation:
    """The engine streams DELTA outputs (only each choice's new tokens per step); `acc` merges them
    for the final (non-streamed) response and usage."""

    def __init__(self, engine: Any, prompt_ids: list[int], params: SamplingParams, request_id: str, *,
                 deadline: float, arrival: float, metrics: ServeMetrics,
                 on_engine_dead: Callable[[Any], None]) -> None:
        self.engine, self.params, self.request_id = engine, params, request_id
        self.prompt_len = len(prompt_ids)
        self.deadline, self.arrival, self.metrics = deadline, arrival, metrics
        self._on_engine_dead = on_engine_dead
        self._agen: Any = engine.generate(prompt_ids, params, request_id)
        self.done = False  # the engine finished (or refused) the request: nothing to abort
        self.closed = False
        self.acc = OutputAccumulator()
        self.num_generated = 0  # tokens over all choices
        self._last_token_t: dict[int, float] = {}  # choice index -> time of its latest token
        metrics.prompt_tokens.inc(self.prompt_len)

    async def next(self) -> RequestOutput | None:
        """The next engine output (new tokens of one or more choices); None when the engine's
        stream ended. Raises APIError."""
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise APIError(504, "request timed out", type="server_error", code="timeout")
        try:
            out = await self._step_before(remaining)
        except StopAsyncIteration:
            self.done = True
            return None
        except TimeoutError:
            raise APIError(504, "request timed out", type="server_error", code="timeout") from None
        except ValueError as e:  # the engine refused the input
            self.done = True
            raise APIError(400, str(e), code="invalid_value") from None
        except RuntimeError as e:  # the engine or a worker died
            self.done = True
            self._on_engine_dead(self.engine)
            log.error("request %s: engine failure: %s", self.request_id, e)
            raise APIError(503, "the engine failed; retry later", type="server_error",
                           code="engine_unavailable") from None
        self.acc.add(out)
        self._record(out)
        if out.finished:
            self.done = True
            self._check_failed(out)
        return out

    def result(self) -> RequestOutput:
        """The whole request (the params.n best choices when best_of > n); after it finished."""
        if self.acc.request is None or not self.acc.request.finished:
            raise APIError(500, "the engine ended the request without a result", type="server_error",
                           code="engine_error")
        return self.acc.result(self.params.n)

    async def _step_before(self, remaining: float) -> RequestOutput:
        if hasattr(asyncio, "timeout"):  # 3.11+: unlike wait_for, never swallows an outside cancel
            async with asyncio.timeout(remaining):
                return await self._step()
        return await asyncio.wait_for(self._step(), remaining)

    async def _step(self) -> RequestOutput:
        if not hasattr(self._agen, "__anext__"):  # `generate` was a coroutine returning the iterator
            self._agen = await self._agen
        return await self._agen.__anext__()

    def _record(self, out: RequestOutput) -> None:
        now = time.monotonic()
        for c in out.outputs:
            new = len(c.token_ids)
            if new <= 0:
                continue
            last = self._last_token_t.get(c.index)
            if self.num_generated == 0:
                self.metrics.ttft.observe(now - self.arrival)
            # a choice's first token ends its time to first token; a step that yields k tokens
            # spreads its time over them
            new_after_first = new - 1 if last is None else new
            gap = now - (self.arrival if last is None else last)
            for _ in range(new_after_first):
                self.metrics.itl.observe(gap / new)
            self.metrics.generation_tokens.inc(new)
            self.num_generated += new
            self._last_token_t[c.index] = now

    def _check_failed(self, out: RequestOutput) -> None:
        self.metrics.e2e.observe(time.monotonic() - self.arrival)
        reasons = [c.finish_reason for c in self.acc.outputs(self.params.n)]
        for reason in reasons or [None]:
            self.metrics.finished.labels(str(reason or ("error" if out.error else "none"))).inc()
        if out.error or "error" in reasons:
            log.error("request %s failed in the engine: %s", self.request_id, out.error)
            raise APIError(500, "the engine failed this request", type="server_error", code="engine_error")
        if "abort" in reasons:
            raise APIError(503, "the engine aborted this request", type="server_error", code="aborted")

    async def watched(self, request: Any, coro: Any) -> Any:
        """Awaits `coro` while polling for client disconnect (non-streaming paths have no other
        way to notice it); on disconnect the coroutine is cancelled and ClientGone raised."""
        task = asyncio.ensure_future(coro)
        try:
            while True:
                done, _ = await asyncio.wait({task}, timeout=_DISCONNECT_POLL_S)
                if done:
                    return task.result()
                if await request.is_disconnected():
                    raise ClientGone()
        finally:
            if not task.done():
                with anyio.CancelScope(shield=True):
                    # Re-cancel until it ends: before Python 3.12, asyncio.wait_for swallows a
                    # cancel that lands as its inner step completes, and the task would go on
                    # generating to max_tokens for a client that is gone.
                    while not task.done():
                        task.cancel()
                        await asyncio.wait({task}, timeout=_DISCONNECT_POLL_S)

    async def run_to_end(self) -> RequestOutput:
        """Steps until the request is done; -> the whole request (see `result`)."""
        while not self.done:
            await self.next()
        return self.result()

    async def close(self) -> None:
        """Idempotent. Aborts the request in the engine unless it finished there; shielded so a
        cancelled (disconnected) request still frees its KV blocks."""
        if self.closed:
            return
        self.closed = True
        with anyio.CancelScope(shield=True):
            try:
                aclose = getattr(self._agen, "aclose", None)
                if asyncio.iscoroutine(self._agen):  # never started
                    self._agen.close()
                elif aclose is not None:
                    await asyncio.wait_for(aclose(), _ABORT_TIMEOUT_S)
            except BaseException as e:  # noqa: BLE001 - cleanup must go on to the abort
                log.debug("request %s: closing the output stream: %r", self.request_id, e)
            if not self.done:
                try:
                    await asyncio.wait_for(self.engine.abort(self.request_id), _ABORT_TIMEOUT_S)
                except BaseException as e:  # noqa: BLE001
                    log.warning("request %s: abort failed: %r", self.request_id, e)


# ---------------------------------------------------------------------------------------------
# logprob formatting


def safe_logprob(x: float) -> float:
    """JSON has no -inf/NaN; clamp like other OpenAI-compatible servers do."""
    if math.isnan(x):
        return -9999.0
    return max(float(x), -9999.0)


class TokenText:
    """token id -> text for logprob entries (engine-provided text first, else decode)."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer

    def __call__(self, lp: Logprob) -> str:
        if lp.token:
            return lp.token
        try:
            return self.tokenizer.decode([lp.token_id])
        except Exception:  # noqa: BLE001 - a formatting helper must not fail the request
            return f"<{lp.token_id}>"


def completion_logprobs(entries: list[tuple[Logprob, list[Logprob]]], text_of: TokenText,
                        offset: int) -> dict[str, Any]:
    tokens, token_lps, tops, offsets = [], [], [], []
    for sampled, alts in entries:
        s = text_of(sampled)
        tokens.append(s)
        token_lps.append(safe_logprob(sampled.logprob))
        tops.append({text_of(a): safe_logprob(a.logprob) for a in alts})
        offsets.append(offset)
        offset += len(s)
    return {"text_offset": offsets, "token_logprobs": token_lps, "tokens": tokens, "top_logprobs": tops}


def chat_logprobs(entries: list[tuple[Logprob, list[Logprob]]], text_of: TokenText) -> dict[str, Any]:
    def one(lp: Logprob) -> dict[str, Any]:
        s = text_of(lp)
        return {"token": s, "logprob": safe_logprob(lp.logprob), "bytes": list(s.encode("utf-8"))}

    return {"content": [dict(one(s), top_logprobs=[one(a) for a in alts]) for s, alts in entries]}
