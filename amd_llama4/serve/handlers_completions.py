"""POST /v1/completions: text completion, JSON or SSE."""
from __future__ import annotations

import time
from typing import Any, AsyncIterator

from fastapi import FastAPI, Request
from fastapi.responses import Response

from amd_llama4.serve import protocol as P
from amd_llama4.serve.generation import TokenText, completion_logprobs
from amd_llama4.serve.handlers_common import (DONE, State, begin, deltas, error_chunk, openapi_responses, respond,
                                              sse, tokenize_prompt, usage)
from amd_llama4.serve.protocol import APIError


def add_completion_routes(app: FastAPI, state: State) -> None:
    @app.post("/v1/completions", responses=openapi_responses(P.CompletionResponse))
    async def completions(request: Request, body: P.CompletionRequest) -> Response:
        slot, engine, model, gen = await begin(state, body, lambda e: tokenize_prompt(e, body.prompt),
                                               body.max_tokens, body.logprobs, "cmpl")
        text_of = TokenText(engine.tokenizer)
        created = int(time.time())

        def choice(c: Any, lps: Any) -> dict:
            return {"index": c.index, "text": c.text, "logprobs": lps, "finish_reason": c.finish_reason,
                    "stop_reason": c.stop_reason if c.finish_reason else None}

        def render_final(out: Any) -> dict:
            choices = [choice(c, completion_logprobs(c.logprobs or [], text_of, 0)
                              if body.logprobs is not None else None) for c in out.outputs]
            return P.CompletionResponse(id=gen.request_id, created=created, model=model, choices=choices,
                                        usage=usage(gen, out)).model_dump(mode="json")

        async def stream_chunks(first: Any) -> AsyncIterator[str]:
            try:
                async for c, sent_text in deltas(gen, first):
                    lps = (completion_logprobs(c.logprobs or [], text_of, sent_text)
                           if body.logprobs is not None else None)
                    if c.text or c.finish_reason or c.logprobs:
                        chunk = {"id": gen.request_id, "object": "text_completion", "created": created,
                                 "model": model, "choices": [choice(c, lps)]}
                        if body.include_usage():
                            chunk["usage"] = None
                        yield sse(chunk)
                if body.include_usage():
                    yield sse({"id": gen.request_id, "object": "text_completion", "created": created,
                               "model": model, "choices": [], "usage": usage(gen)})
            except APIError as e:
                yield error_chunk(e)
            yield DONE

        return await respond(request, body, slot, gen, render_final, stream_chunks)
