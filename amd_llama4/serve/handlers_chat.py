"""POST /v1/chat/completions: chat completion, JSON or SSE; with tools, the output read as tool calls
(serve/tools/: a parser for tool_choice auto, the grammar's JSON for a forced tool_choice)."""
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
from amd_llama4.serve.protocol import APIError, bad_request
from amd_llama4.serve.tools import request as TR


def add_chat_routes(app: FastAPI, state: State) -> None:
    @app.post("/v1/chat/completions", responses=openapi_responses(P.ChatCompletionResponse))
    async def chat_completions(request: Request, body: P.ChatCompletionRequest) -> Response:
        mode = body.tool_mode()
        if mode == TR.AUTO and not (state.enable_auto_tool_choice and state.tool_call_parser):
            raise bad_request('tool_choice: "auto" (the default when tools are given) needs the server started with '
                              "--enable-auto-tool-choice and --tool-call-parser; or send tool_choice "
                              '"none", "required" or a named function', "tool_choice")
        tool_out = TR.ToolOutput(mode, body.tools, body.tool_choice, state.tool_call_parser)
        tools = TR.tool_dicts(body.tools)  # also with tool_choice none, as vLLM: the template lists them
        top = (body.top_logprobs or 0) if body.logprobs else None
        slot, engine, model, gen = await begin(state, body, lambda e: tokenize_chat(e, body.template_messages(),
                                                                                   tools=tools),
                                               body.requested_max_tokens(), top, "chatcmpl", body.image_urls())
        text_of = TokenText(engine.tokenizer)
        created = int(time.time())

        def render_choice(c: Any) -> dict:
            content, calls = tool_out.message(c.text)
            message: dict[str, Any] = {"role": "assistant", "content": content}
            if calls:
                message["tool_calls"] = calls
            return {"index": c.index, "message": message,
                    "logprobs": chat_logprobs(c.logprobs or [], text_of) if body.logprobs else None,
                    "finish_reason": tool_out.finish_reason(c.finish_reason, bool(calls)), "stop_reason": c.stop_reason}

        def render_final(out: Any) -> dict:
            choices = [render_choice(c) for c in out.outputs]
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
                obj["usage"] = usage_ if usage_ is not None or not body.continuous_usage() else usage(gen)
            return sse(obj)

        async def stream_chunks(first: Any) -> AsyncIterator[str]:
            try:
                for i in range(gen.params.n):  # every choice opens with its role (as OpenAI, vLLM)
                    yield chunk(i, {"role": "assistant", "content": ""}, None, None)
                parsers: dict[int, Any] = {}  # choice index -> its tool-call stream parser (None: plain text)
                async for c, _ in deltas(gen, first):
                    lps = chat_logprobs(c.logprobs or [], text_of) if body.logprobs else None
                    if c.index not in parsers:
                        parsers[c.index] = tool_out.stream()
                    parser = parsers[c.index]
                    if parser is None:
                        pieces = [{"content": c.text}] if c.text or c.logprobs else []
                    else:  # text held while it may be a call comes out later, as content or tool_calls
                        pieces = parser.feed(c.text, final=bool(c.finish_reason))
                        pieces = pieces or ([{"content": ""}] if c.logprobs else [])
                    for k, piece in enumerate(pieces):
                        yield chunk(c.index, piece, lps if k == 0 else None, None)
                    if c.finish_reason:
                        called = parser is not None and bool(parser.calls)
                        yield chunk(c.index, {}, None, tool_out.finish_reason(c.finish_reason, called))
                if body.include_usage():
                    yield chunk(0, {}, None, None, usage_=usage(gen), choices=False)
            except APIError as e:
                yield error_chunk(e)
            yield DONE

        return await respond(request, body, slot, gen, render_final, stream_chunks)
