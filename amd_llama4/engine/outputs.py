"""What the engine returns per request (vLLM's shape: cumulative text and token ids)."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Logprob:
    token_id: int
    logprob: float
    token: str = ""


@dataclass
class CompletionOutput:
    index: int
    text: str  # cumulative decoded text (stop string cut off unless include_stop_str_in_output)
    token_ids: list[int]  # cumulative generated ids
    finish_reason: str | None = None  # None while running; "stop" | "length" | "abort" | "error"
    stop_reason: int | str | None = None  # the stop string or token id that ended it
    # One entry per generated token: (sampled token's logprob, top-N alternatives); None if not asked.
    logprobs: list[tuple[Logprob, list[Logprob]]] | None = None

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass
class RequestOutput:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput] = field(default_factory=list)
    finished: bool = False
    error: str | None = None  # set when the request failed inside the engine (finish_reason "error")
