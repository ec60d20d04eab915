"""POST /v1/chat/completions: chat completion, JSON or SSE."""
from __future__ import annotations

import time
from typing import Any, AsyncIterator

from fastapi import FastAPI, Request
from fastapi.responses import Response

from amd_llama4.serve import protocol as P
from amd_llama4.serve import prompt_logprobs as PL
from amd_llama4.serve.generation import TokenText, chat_logprobs
from amd_llama4.serve.handlers_common import (DONE, State, begin, deltas, error_chunk, openapi_responses, respond,
                                              sse, tokenize_chat, usage)
from amd_llama4.serve.protocol import APIError


def add_chat_routes(app: FastAPI, state: State) -> None:
    @app.post("/v1/chat/completions", responses=openapi_responses(P.ChatCompletionResponse))
    async def chat_completions(request: Request, body: P.ChatCompletionRequest) -> Response:
        top = (body.top_logprobs or 0) if body.logprobs else None
        slot, engine, model, gen = await begin(state, body, lambda e: tokenize_chat(e, body.template_messages()),
                                               body.requested_max_tokens(), top, "chatcmpl", body.image_urls())
        text_of = TokenText(engine.tokenizer)
        created = int(time.time())

        def render_final(out: Any) -> dict:
            choices = [{"index": c.index, "message": {"role": "assistant", "content": c.text},
                        "logprobs": chat_logprobs(c.logprobs or [], text_of) if body.logprobs else None,
                        "finish_reason": c.finish_reason, "stop_reason": c.stop_reason} for c in out.outputs]
            plp = None
            if body.prompt_logprobs is not None:  # vLLM's: at the top level (not streamed)
                entries = PL.require(out.prompt_logprobs, len(out.prompt_token_ids or []) or gen.prompt_len)
                plp = PL.vllm_prompt_logprobs(entries, body.prompt_logprobs, text_of)
            return P.ChatCompletionResponse(id=gen.request_id, created=created, model=model, usage=usage(gen, out),
                                            choices=choices, prompt_logprobs=plp).model_dump(mode="json")

        def chunk(index: int, delta: dict, lps: Any, finish: Any, usage_: Any = None, choices: bool = True) -> str:
            obj: dict[str, Any] = {"id": gen.request_id, "object": "chat.completion.chunk", "created": created,
                                   "model": model,
                                   "choices": [{"index": index, "delta": delta, "logprobs": lps,
                                                "finish_reason": finish}] if choices else []}
            if body.include_usage():
                obj["usage"] = usage_
            return sse(obj)

        async def stream_chunks(first: Any) -> AsyncIterator[str]:
            try:
                for i in range(gen.params.n):  # every choice opens with its role (as OpenAI, vLLM)
                    yield chunk(i, {"role": "assistant", "content": ""}, None, None)
                async for c, _ in deltas(gen, first):
                    lps = chat_logprobs(c.logprobs or [], text_of) if body.logprobs else None
                    if c.text or c.logprobs:
                        yield chunk(c.index, {"content": c.text}, lps, None)
                    if c.finish_reason:
                        yield chunk(c.index, {}, None, c.finish_reason)
                if body.include_usage():
                    yield chunk(0, {}, None, None, usage_=usage(gen), choices=False)
            except APIError as e:
                yield error_chunk(e)
            yield DONE

        return await respond(request, body, slot, gen, render_final, stream_chunks)
