"""POST /v1/completions: text completion, JSON or SSE; one prompt or a batch (choices prompt-major,
n per prompt, `index` continuous), echo, prompt logprobs (echo + logprobs, vLLM's prompt_logprobs)."""
from __future__ import annotations

import time
from typing import Any, AsyncIterator

from fastapi import FastAPI, Request
from fastapi.responses import Response

from amd_llama4.serve import protocol as P
from amd_llama4.serve import prompt_logprobs as PL
from amd_llama4.serve.generation import Generation, TokenText, completion_logprobs
from amd_llama4.serve.handlers_common import (DONE, State, begin, deltas, error_chunk, merged, openapi_responses,
                                              respond_many, sse, tokenize_prompt, usage, usage_sum)
from amd_llama4.serve.protocol import APIError


class _Prompt:
    """One prompt of the request: its engine request, token ids, and what is echoed before its choices."""

    def __init__(self, index: int, prompt: str | list[int]) -> None:
        self.index, self.prompt = index, prompt
        self.ids: list[int] = []
        self.gen: Generation | None = None

    async def tokenize(self, engine: Any) -> list[int]:
        self.ids = await tokenize_prompt(engine, self.prompt)
        return self.ids

    def echo_text(self, engine: Any) -> str:
        return self.prompt if isinstance(self.prompt, str) else engine.tokenizer.decode(self.ids)


def add_completion_routes(app: FastAPI, state: State) -> None:
    @app.post("/v1/completions", responses=openapi_responses(P.CompletionResponse))
    async def completions(request: Request, body: P.CompletionRequest) -> Response:
        prompts = [_Prompt(i, p) for i, p in enumerate(body.prompts())]
        started: list = []
        try:
            for p in prompts:
                slot, engine, model, p.gen = await begin(state, body, p.tokenize, body.max_tokens, body.logprobs,
                                                         "cmpl", prompt_logprobs=body.engine_prompt_logprobs())
                started.append((slot, p.gen))
        except BaseException:
            for slot, gen in started:
                await gen.close()
                slot.release()
            raise
        text_of = TokenText(engine.tokenizer)
        created = int(time.time())
        n = body.n or 1
        echo_lps = body.echo and body.logprobs is not None

        def prompt_parts(p: _Prompt) -> tuple[str, dict | None, list | None]:
            """(echoed text, echoed logprobs, vLLM prompt_logprobs) of prompt p; once it has them."""
            entries = p.gen.acc.request.prompt_logprobs if p.gen.acc.request is not None else None
            if echo_lps or body.prompt_logprobs is not None:
                entries = PL.require(entries, len(p.ids))
            echo = p.echo_text(engine) if body.echo else ""
            lps = PL.echo_logprobs(entries, p.ids, body.logprobs, text_of) if echo_lps else None
            plp = (PL.vllm_prompt_logprobs(entries, body.prompt_logprobs, text_of)
                   if body.prompt_logprobs is not None else None)
            return echo, lps, plp

        def choice(p: _Prompt, c: Any, text: str, lps: Any, plp: Any = None) -> dict:
            out = {"index": p.index * n + c.index, "text": text, "logprobs": lps, "finish_reason": c.finish_reason,
                   "stop_reason": c.stop_reason if c.finish_reason else None}
            if plp is not None:
                out["prompt_logprobs"] = plp
            return out

        def render_final(finals: list[Any]) -> dict:
            choices = []
            for p, out in zip(prompts, finals):
                echo, echo_lp, plp = prompt_parts(p)
                for c in out.outputs:
                    lps = None
                    if body.logprobs is not None:
                        lps = completion_logprobs(c.logprobs or [], text_of, len(echo))
                        lps = PL.concat_logprobs(echo_lp, lps) if echo_lp is not None else lps
                    choices.append(choice(p, c, echo + c.text, lps, plp))
            total = usage_sum([usage(p.gen, out) for p, out in zip(prompts, finals)])
            return P.CompletionResponse(id=prompts[0].gen.request_id, created=created, model=model,
                                        choices=choices, usage=total).model_dump(mode="json", exclude_none=False)

        def chunk(choices: list[dict], usage_: Any = None) -> str:
            obj: dict[str, Any] = {"id": prompts[0].gen.request_id, "object": "text_completion",
                                   "created": created, "model": model, "choices": choices}
            if body.include_usage():
                obj["usage"] = (usage_ if usage_ is not None or not body.continuous_usage()
                                else usage_sum([usage(p.gen) for p in prompts]))
            return sse(obj)

        async def one_stream(p: _Prompt, first: Any) -> AsyncIterator[str]:
            opened: set[int] = set()  # choices whose first chunk (with the echo) went out
            try:
                async for c, sent_text in deltas(p.gen, first):
                    opening = c.index not in opened
                    echo, echo_lp, plp = prompt_parts(p) if opening else ("", None, None)
                    shift = len(p.echo_text(engine)) if body.echo else 0
                    lps = None
                    if body.logprobs is not None:
                        lps = completion_logprobs(c.logprobs or [], text_of, shift + sent_text)
                        lps = PL.concat_logprobs(echo_lp, lps) if echo_lp is not None else lps
                    opened.add(c.index)
                    if echo or plp is not None or c.text or c.finish_reason or c.logprobs:
                        yield chunk([choice(p, c, echo + c.text, lps, plp)])
            except APIError as e:
                yield error_chunk(e)

        async def stream_chunks(firsts: list[Any]) -> AsyncIterator[str]:
            async for item in merged([one_stream(p, f) for p, f in zip(prompts, firsts)]):
                yield item
            if body.include_usage():
                yield chunk([], usage_sum([usage(p.gen) for p in prompts]))
            yield DONE

        return await respond_many(request, body, started, render_final, stream_chunks)
