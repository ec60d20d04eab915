"""OpenAI-compatible request/response models (pydantic v2) and their mapping to SamplingParams.

Field constraints live in the models so the OpenAPI schema documents them; checks that need the
engine (vocab size, max_model_len, served model name) happen in `serve/app.py`."""
from __future__ import annotations

import dataclasses
import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from amd_llama4.engine.sampling_params import MAX_STOP_STRINGS, MAX_TOP_LOGPROBS, RequestOutputKind, SamplingParams
from amd_llama4.serve.tools import models as TM
from amd_llama4.serve.tools import request as TR
from amd_llama4.structured.params import StructuredOutputsParams
from amd_llama4.structured.request import (ResponseFormat, StructuredOutputsError, StructuredOutputsRequest,
                                           request_constraint)

MAX_STOP_STRING_CHARS = 512
MAX_STOP_TOKEN_IDS = 64
MAX_LOGIT_BIAS_ENTRIES = 300  # OpenAI's own limit
INT64_MAX = 2**63 - 1
MAX_N = 128  # samples per request (n, best_of): each is a sequence in the engine's batch
MAX_PROMPTS = 128  # prompts in one /v1/completions request: each is an engine request


class APIError(Exception):
    """An error that becomes an OpenAI-format JSON body with `status`."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.param, self.code)


def error_body(message: str, type: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def bad_request(message: str, param: str | None = None, code: str | None = "invalid_value") -> APIError:
    return APIError(400, message, param=param, code=code)


def random_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


class _Model(BaseModel):
    # Unknown fields are ignored (clients add vendor fields); unsupported known ones are rejected below.
    model_config = ConfigDict(extra="ignore", strict=True)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


# ---------------------------------------------------------------------------------------------
# errors and shared pieces


class ErrorInfo(_Strict):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(_Strict):
    error: ErrorInfo


class StreamOptions(_Strict):
    include_usage: bool = False
    # vLLM's: with include_usage, every chunk also carries the usage so far (guidellm sends it)
    continuous_usage_stats: bool = False


class UsageInfo(_Strict):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class _SamplingFields(_Model):
    """Fields shared by /v1/completions and /v1/chat/completions (OpenAI + vLLM extras)."""

    model: str | None = Field(None, max_length=1024, description="must be the served model; None = it")
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    top_k: int | None = Field(None, ge=-1, le=1_000_000, description="-1 or 0 = off")
    min_p: float | None = Field(None, ge=0.0, le=1.0)
    n: int | None = Field(None, ge=1, le=MAX_N, description="choices to return")
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = Field(None, max_length=MAX_STOP_TOKEN_IDS)
    seed: int | None = Field(None, ge=-(2**63), le=INT64_MAX)
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    repetition_penalty: float | None = Field(None, gt=0.0, le=10.0)
    ignore_eos: bool | None = False
    min_tokens: int | None = Field(None, ge=0, le=INT64_MAX)
    skip_special_tokens: bool | None = True
    include_stop_str_in_output: bool | None = False
    logit_bias: dict[str, float] | None = Field(None, description="token id -> bias in [-100, 100]")
    prompt_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS,
                                        description="vLLM's: top logprobs per prompt token (the first is null)")
    user: str | None = Field(None, max_length=256)
    response_format: ResponseFormat | None = Field(None, description="text, json_object or json_schema output")
    structured_outputs: StructuredOutputsRequest | None = Field(
        None, description="vLLM's: exactly one of json (a schema), regex, choice, grammar (Lark), json_object")

    @field_validator("stop")
    @classmethod
    def _check_stop(cls, v: str | list[str] | None) -> str | list[str] | None:
        stops = [v] if isinstance(v, str) else (v or [])
        if len(stops) > MAX_STOP_STRINGS:
            raise ValueError(f"{len(stops)} stop strings; at most {MAX_STOP_STRINGS}")
        for s in stops:
            if not s:
                raise ValueError("stop strings must be non-empty")
            if len(s) > MAX_STOP_STRING_CHARS:
                raise ValueError(f"stop strings must be at most {MAX_STOP_STRING_CHARS} characters")
        return v

    @field_validator("stop_token_ids")
    @classmethod
    def _check_stop_ids(cls, v: list[int] | None) -> list[int] | None:
        if v and any(t < 0 or t > INT64_MAX for t in v):
            raise ValueError("stop_token_ids must be non-negative token ids")
        return v

    @field_validator("logit_bias")
    @classmethod
    def _check_logit_bias(cls, v: dict[str, float] | None) -> dict[str, float] | None:
        if not v:
            return v
        if len(v) > MAX_LOGIT_BIAS_ENTRIES:
            raise ValueError(f"at most {MAX_LOGIT_BIAS_ENTRIES} entries")
        for key, bias in v.items():
            if not key.isdigit() or len(key) > 18:
                raise ValueError(f"key {key[:32]!r} is not a token id (a non-negative integer)")
            if not -100.0 <= bias <= 100.0:
                raise ValueError(f"bias {bias} for token {key} not in [-100, 100]")
        return v

    @model_validator(mode="after")
    def _check_stream_options(self):
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options is only allowed with stream=true")
        return self

    def stop_list(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])

    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def continuous_usage(self) -> bool:
        """Every streamed chunk carries the usage so far (vLLM's continuous_usage_stats)."""
        return self.include_usage() and bool(self.stream_options.continuous_usage_stats)

    def samples(self) -> tuple[int, int | None]:
        """(n, best_of) of this request; only /v1/completions has best_of."""
        return self.n or 1, getattr(self, "best_of", None)

    def structured_outputs_params(self) -> StructuredOutputsParams | None:
        """The output constraint from response_format / structured_outputs (None: free text); a bad
        schema, regex or grammar is a 400 naming the field."""
        try:
            return request_constraint(self.response_format, self.structured_outputs)
        except StructuredOutputsError as e:
            raise bad_request(str(e), e.param) from None

    def to_sampling_params(self, max_tokens: int, logprobs: int | None,
                           prompt_logprobs: int | None = None) -> SamplingParams:
        """Raises APIError(400) for combinations SamplingParams rejects. The server consumes DELTA
        outputs: each engine step hands over only the new tokens."""
        n, best_of = self.samples()
        kwargs: dict[str, Any] = dict(
            n=n,
            best_of=best_of,
            output_kind=RequestOutputKind.DELTA,
            temperature=1.0 if self.temperature is None else self.temperature,
            top_k=self.top_k or 0,
            top_p=1.0 if self.top_p is None else self.top_p,
            min_p=self.min_p or 0.0,
            repetition_penalty=1.0 if self.repetition_penalty is None else self.repetition_penalty,
            presence_penalty=self.presence_penalty or 0.0,
            frequency_penalty=self.frequency_penalty or 0.0,
            seed=self.seed,
            max_tokens=max_tokens,
            min_tokens=self.min_tokens or 0,
            stop=self.stop_list(),
            stop_token_ids=list(self.stop_token_ids or []),
            ignore_eos=bool(self.ignore_eos),
            logprobs=logprobs,
            prompt_logprobs=prompt_logprobs,
            skip_special_tokens=True if self.skip_special_tokens is None else self.skip_special_tokens,
            include_stop_str_in_output=bool(self.include_stop_str_in_output),
            structured_outputs=self.structured_outputs_params(),
        )
        if self.logit_bias:
            if "logit_bias" not in {f.name for f in dataclasses.fields(SamplingParams)}:
                raise bad_request("logit_bias is not supported by this server", "logit_bias", "unsupported")
            kwargs["logit_bias"] = {int(k): float(b) for k, b in self.logit_bias.items()}
        try:
            return SamplingParams(**kwargs)
        except ValueError as e:  # e.g. min_tokens > max_tokens
            msg = str(e).removeprefix("SamplingParams.")
            raise bad_request(msg, msg.split(":", 1)[0]) from None


# ---------------------------------------------------------------------------------------------
# /v1/completions

PromptType = str | list[int] | list[str] | list[list[int]]


class CompletionRequest(_SamplingFields):
    prompt: PromptType = Field(..., description="a string or token ids, or a list of prompts (all strings or "
                               f"all token-id lists, at most {MAX_PROMPTS}); choices are prompt-major")
    max_tokens: int | None = Field(16, ge=0, le=INT64_MAX, description="0: score the prompt only (with "
                                   "echo + logprobs or prompt_logprobs)")
    logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    echo: bool | None = Field(False, description="prepend the prompt to each choice's text (and, with "
                              "logprobs, the prompt tokens' logprobs; the first is null)")
    best_of: int | None = Field(None, ge=1, le=MAX_N, description="samples generated (>= n); the n with the "
                                "highest cumulative logprob are returned; not with stream=true")
    suffix: str | None = Field(None, max_length=0, description="not supported")

    @field_validator("prompt")
    @classmethod
    def _check_prompt(cls, v: PromptType) -> PromptType:
        batch = v if isinstance(v, list) and v and isinstance(v[0], (str, list)) else [v]
        if len(batch) > MAX_PROMPTS:
            raise ValueError(f"a batch of {len(batch)} prompts; at most {MAX_PROMPTS} per request")
        for i, p in enumerate(batch):
            where = f"prompt {i}" if len(batch) > 1 else "the prompt"
            if isinstance(p, list):
                if not p:
                    raise ValueError(f"{where} is empty")
                if any(t < 0 or t > INT64_MAX for t in p):
                    raise ValueError(f"{where}: token ids must be non-negative")
        return v

    def prompts(self) -> list[str | list[int]]:
        """The request's prompts: one, or each of a batch."""
        p = self.prompt
        return list(p) if isinstance(p, list) and p and isinstance(p[0], (str, list)) else [p]  # type: ignore[list-item]

    def engine_prompt_logprobs(self) -> int | None:
        """Top-k the engine computes per prompt token: echo + logprobs needs `logprobs` of them."""
        echoed = self.logprobs if self.echo and self.logprobs is not None else None
        if echoed is None or self.prompt_logprobs is None:
            return self.prompt_logprobs if echoed is None else echoed
        return max(echoed, self.prompt_logprobs)

    @field_validator("best_of")
    @classmethod
    def _check_best_of(cls, v: int | None, info: ValidationInfo) -> int | None:
        n = info.data.get("n") or 1  # fields are validated in order: n and stream come first
        if v is not None and v < n:
            raise ValueError(f"{v} must be >= n ({n})")
        if v is not None and v > n and info.data.get("stream"):
            raise ValueError("best_of > n cannot be streamed (the n best are known only at the end)")
        return v



class CompletionLogprobs(_Strict):
    text_offset: list[int] = Field(default_factory=list)
    token_logprobs: list[float | None] = Field(default_factory=list)
    tokens: list[str] = Field(default_factory=list)
    top_logprobs: list[dict[str, float] | None] = Field(default_factory=list)


class PromptLogprob(_Strict):
    """vLLM's entry of prompt_logprobs (keyed by token id)."""
    logprob: float
    rank: int | None = None  # 1 = most likely; None when the token is outside the returned top-k
    decoded_token: str | None = None


PromptLogprobs = list[dict[str, PromptLogprob] | None]


class CompletionChoice(_Strict):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    prompt_logprobs: PromptLogprobs | None = None


class CompletionResponse(_Strict):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[CompletionChoice]
    usage: UsageInfo | None = None


class CompletionStreamResponse(CompletionResponse):
    pass


# ---------------------------------------------------------------------------------------------
# /v1/chat/completions


class ImageURL(_Model):
    url: str = Field(..., description="data:image/...;base64,... or http(s) on an allowed media domain")
    detail: Literal["auto", "low", "high"] | None = None  # accepted (OpenAI's); Llama 4 tiles every image


class ContentPart(_Model):
    type: str
    text: str | None = None
    image_url: ImageURL | None = None


class ChatMessage(_Model):
    role: Literal["system", "developer", "user", "assistant", "tool", "ipython"]
    content: str | list[ContentPart] | None = None
    name: str | None = Field(None, max_length=256)
    tool_call_id: str | None = None
    tool_calls: list[TM.ToolCallIn] | None = Field(None, description="an assistant turn's calls")

    @field_validator("tool_calls")
    @classmethod
    def _check_tool_calls(cls, v: list[TM.ToolCallIn] | None, info: ValidationInfo) -> list[TM.ToolCallIn] | None:
        if v and info.data.get("role") != "assistant":
            raise ValueError("only assistant messages carry tool_calls")
        return v

    def image_urls(self) -> list[str]:
        """The URLs of this message's image_url parts, in order."""
        if not isinstance(self.content, list):
            return []
        return [p.image_url.url for p in self.content if p.type == "image_url" and p.image_url is not None]

    def template_content(self) -> str | list[dict[str, Any]]:
        """Text parts flattened to one string; with images, the parts list the chat template turns
        into one image placeholder per image_url part. Other part types (audio, ...) are refused."""
        if self.content is None or isinstance(self.content, str):
            return self.content or ""
        parts: list[dict[str, Any]] = []
        for part in self.content:
            if part.type == "text" and part.text is not None:
                parts.append({"type": "text", "text": part.text})
            elif part.type == "image_url" and part.image_url is not None:
                parts.append({"type": "image_url"})
            else:
                raise bad_request(f"content part type {part.type[:32]!r} is not supported (text and image_url "
                                  "with image_url.url)", "messages", "unsupported")
        if all(p["type"] == "text" for p in parts):
            return "".join(p["text"] for p in parts)
        return parts


class ChatCompletionRequest(_SamplingFields):
    messages: list[ChatMessage] = Field(..., min_length=1)
    max_tokens: int | None = Field(None, ge=1, le=INT64_MAX, description="deprecated alias")
    max_completion_tokens: int | None = Field(None, ge=1, le=INT64_MAX)
    logprobs: bool | None = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    tools: list[TM.ChatTool] | None = Field(None, max_length=TM.MAX_TOOLS, description="functions the model may call")
    tool_choice: TM.ToolChoice | None = Field(None, description="none | auto (the default with tools; needs "
                                              "--enable-auto-tool-choice) | required | a named function")
    parallel_tool_calls: bool | None = Field(None, description="false: at most one call (tool_choice required)")
    # The legacy function-calling API: accepted only in its "off" forms, anything else is a 400.
    functions: list[Any] | None = None
    function_call: Any | None = None

    @model_validator(mode="after")
    def _check_unsupported(self):
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("top_logprobs requires logprobs=true")
        if self.prompt_logprobs is not None and self.stream:
            raise ValueError("prompt_logprobs are not returned with stream=true (as vLLM's)")
        if self.functions or self.function_call not in (None, "none", "auto"):
            raise ValueError("functions/function_call (the legacy API) are not supported; use tools and tool_choice")
        return self

    @field_validator("tools")
    @classmethod
    def _check_tools(cls, v: list[TM.ChatTool] | None) -> list[TM.ChatTool] | None:
        return TR.check_tools(v)

    @field_validator("tool_choice", mode="wrap")
    @classmethod
    def _check_tool_choice(cls, v: Any, handler: Any, info: ValidationInfo) -> Any:
        try:
            v = handler(v)
        except ValueError:  # pydantic's ValidationError: one message instead of one per union member
            raise ValueError(TR.TOOL_CHOICE_FORMS) from None
        return TR.check_tool_choice(v, info.data.get("tools"))

    def tool_mode(self) -> str:
        """none | auto | required | named: how this request's output is read."""
        return TR.tool_mode(self.tools, self.tool_choice)

    def structured_outputs_params(self) -> Any:
        """A forced tool_choice constrains the output to the calls' JSON (shared with
        response_format / structured_outputs, so not together with them)."""
        if self.tool_mode() not in (TR.REQUIRED, TR.NAMED):
            return super().structured_outputs_params()
        rf = getattr(self, "response_format", None)
        if getattr(self, "structured_outputs", None) is not None or getattr(rf, "type", "text") != "text":
            raise bad_request("tool_choice: a forced tool_choice (required or a named function) cannot be combined "
                              "with response_format or structured_outputs", "tool_choice")
        from amd_llama4.structured.params import StructuredOutputsParams

        try:
            return StructuredOutputsParams(json=TR.forced_schema(self.tools or [], self.tool_choice,
                                                                 self.parallel_tool_calls))
        except ValueError as e:
            raise bad_request(f"tools: the tool_choice grammar cannot be built: {str(e)[:400]}", "tools") from None

    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    def template_messages(self) -> list[dict[str, Any]]:
        out = []
        for m in self.messages:
            d: dict[str, Any] = {"role": m.role, "content": m.template_content()}
            if m.name is not None:
                d["name"] = m.name
            if m.tool_call_id is not None:
                d["tool_call_id"] = m.tool_call_id
            if m.tool_calls:
                d["tool_calls"] = [c.model_dump() for c in m.tool_calls]
            out.append(d)
        return out

    def image_urls(self) -> list[str]:
        """Every image_url part's URL, in prompt order (the order of the template's placeholders)."""
        return [u for m in self.messages for u in m.image_urls()]


class TopLogprob(_Strict):
    token: str
    logprob: float
    bytes: list[int] | None = None


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob] = Field(default_factory=list)


class ChoiceLogprobs(_Strict):
    content: list[TokenLogprob] | None = None


class AssistantMessage(_Strict):
    role: Literal["assistant"] = "assistant"
    content: str | None = None
    tool_calls: list[TM.ToolCall] | None = Field(None, exclude_if=lambda v: v is None)  # only when made


class ChatChoice(_Strict):
    index: int
    message: AssistantMessage
    logprobs: ChoiceLogprobs | None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None


class ChatCompletionResponse(_Strict):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[ChatChoice]
    usage: UsageInfo | None = None
    prompt_logprobs: PromptLogprobs | None = None  # vLLM's: at the top level for chat


class DeltaMessage(_Strict):
    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[TM.DeltaToolCall] | None = Field(None, exclude_if=lambda v: v is None)


class ChatStreamChoice(_Strict):
    index: int
    delta: DeltaMessage
    logprobs: ChoiceLogprobs | None = None
    finish_reason: str | None = None


class ChatCompletionStreamResponse(_Strict):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[ChatStreamChoice]
    usage: UsageInfo | None = None


# ---------------------------------------------------------------------------------------------
# /v1/models and /health


class ModelCard(_Strict):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(default_factory=lambda: int(time.time()))
    owned_by: str = "amd-llama4"
    max_model_len: int | None = None


class ModelList(_Strict):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class HealthResponse(_Strict):
    status: str
    detail: str | None = None


# ---------------------------------------------------------------------------------------------
# /tokenize and /detokenize (vLLM's shapes)

MAX_DETOKENIZE_TOKENS = 1_000_000


class TokenizeRequest(_Model):
    model: str | None = Field(None, max_length=1024)
    prompt: str | None = None
    messages: list[ChatMessage] | None = Field(None, min_length=1)
    add_special_tokens: bool = Field(True, description="prompt: prepend BOS")
    add_generation_prompt: bool = Field(True, description="messages: end with the assistant header")

    @model_validator(mode="after")
    def _one_input(self):
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of prompt and messages")
        return self

    def template_messages(self) -> list[dict[str, Any]]:
        return ChatCompletionRequest.model_construct(messages=self.messages or []).template_messages()


class TokenizeResponse(_Strict):
    count: int
    max_model_len: int
    tokens: list[int]


class DetokenizeRequest(_Model):
    model: str | None = Field(None, max_length=1024)
    tokens: list[int] = Field(..., max_length=MAX_DETOKENIZE_TOKENS)

    @field_validator("tokens")
    @classmethod
    def _check_tokens(cls, v: list[int]) -> list[int]:
        if any(t < 0 for t in v):
            raise ValueError("token ids must be non-negative")
        return v


class DetokenizeResponse(_Strict):
    prompt: str
