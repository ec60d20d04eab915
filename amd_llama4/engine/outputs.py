"""What the engine returns per request (vLLM's shape), and the merge of per-step deltas.

A request with n (or best_of) samples yields one CompletionOutput per sample, `index` 0..n-1. With
SamplingParams.output_kind CUMULATIVE every output holds the whole text/ids so far; with DELTA
(the server and LLM.generate) only what is new since that sample's previous output, and
`OutputAccumulator` rebuilds whole outputs in O(new tokens) per step."""
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
    text: str  # decoded text (stop string cut off unless include_stop_str_in_output); DELTA: new text only
    token_ids: list[int]  # generated ids; DELTA: new ids only
    finish_reason: str | None = None  # None while running; "stop" | "length" | "abort" | "error"
    stop_reason: int | str | None = None  # the stop string or token id that ended it
    # One entry per generated token: (sampled token's logprob, top-N alternatives); None if not asked.
    logprobs: list[tuple[Logprob, list[Logprob]]] | None = None
    # Sum of the sampled tokens' logprobs so far (always the running total, also in DELTA mode);
    # None when the request asked for no logprobs and has no best_of ranking.
    cumulative_logprob: float | None = None

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass
class RequestOutput:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput] = field(default_factory=list)
    finished: bool = False  # every sample of the request finished
    error: str | None = None  # set when the request failed inside the engine (finish_reason "error")
    # SamplingParams.prompt_logprobs: per prompt position None (the first) or (Logprob, top-k Logprobs)
    prompt_logprobs: list | None = None


def select_best(outputs: list[CompletionOutput], n: int) -> list[CompletionOutput]:
    """The n outputs with the highest cumulative logprob (best_of), best first, re-indexed 0..n-1;
    with no more than n outputs, all of them in index order."""
    if len(outputs) <= n:
        return sorted(outputs, key=lambda c: c.index)
    ranked = sorted(outputs, key=lambda c: (-(c.cumulative_logprob if c.cumulative_logprob is not None
                                                else float("-inf")), c.index))[:n]
    for i, c in enumerate(ranked):
        c.index = i
    return ranked


class _Merged:
    __slots__ = ("index", "texts", "token_ids", "logprobs", "finish_reason", "stop_reason", "cumulative_logprob")

    def __init__(self, index: int, with_logprobs: bool) -> None:
        self.index, self.texts, self.token_ids = index, [], []
        self.logprobs = [] if with_logprobs else None
        self.finish_reason = self.stop_reason = self.cumulative_logprob = None

    def output(self) -> CompletionOutput:
        return CompletionOutput(self.index, "".join(self.texts), self.token_ids, self.finish_reason,
                                self.stop_reason, self.logprobs, self.cumulative_logprob)


class OutputAccumulator:
    """Merges one request's DELTA outputs into whole CompletionOutputs (text pieces are joined once,
    at the end, so each delta costs O(its size))."""

    def __init__(self) -> None:
        self.request: RequestOutput | None = None
        self._by_index: dict[int, _Merged] = {}

    def add(self, out: RequestOutput) -> None:
        if self.request is None:
            self.request = RequestOutput(out.request_id, out.prompt, out.prompt_token_ids)
        self.request.finished = out.finished
        self.request.error = out.error or self.request.error
        if self.request.prompt_logprobs is None and out.prompt_logprobs is not None:
            self.request.prompt_logprobs = out.prompt_logprobs
        for c in out.outputs:
            m = self._by_index.get(c.index)
            if m is None:
                m = self._by_index[c.index] = _Merged(c.index, c.logprobs is not None)
            if c.text:
                m.texts.append(c.text)
            m.token_ids.extend(c.token_ids)
            if m.logprobs is not None and c.logprobs:
                m.logprobs.extend(c.logprobs)
            m.finish_reason, m.stop_reason = c.finish_reason, c.stop_reason
            m.cumulative_logprob = c.cumulative_logprob

    @property
    def num_generated(self) -> int:
        return sum(len(m.token_ids) for m in self._by_index.values())

    def outputs(self, n: int | None = None) -> list[CompletionOutput]:
        """Whole outputs so far; with n, the n best (best_of) once more than n samples ran."""
        outs = [m.output() for m in self._by_index.values()]
        return select_best(outs, n) if n is not None else sorted(outs, key=lambda c: c.index)

    def result(self, n: int | None = None) -> RequestOutput:
        """The whole RequestOutput (call once the request finished)."""
        if self.request is None:
            raise ValueError("OutputAccumulator.result: no output was added")
        r = self.request
        return RequestOutput(r.request_id, r.prompt, r.prompt_token_ids, self.outputs(n), r.finished, r.error,
                             r.prompt_logprobs)
