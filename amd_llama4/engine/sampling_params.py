"""Per-request sampling parameters (vLLM's names and meanings)."""
from __future__ import annotations

import enum
from dataclasses import dataclass, field, replace

from amd_llama4.structured.params import StructuredOutputsParams

MAX_STOP_STRINGS = 16
MAX_TOP_LOGPROBS = 20


class RequestOutputKind(enum.Enum):
    """What each per-step RequestOutput carries (vLLM's RequestOutputKind).
    CUMULATIVE: every output holds the whole text/ids/logprobs so far (each step costs O(length)).
    DELTA: only what is new since the previous output of that sample (O(new tokens)); consumers
    merge with outputs.OutputAccumulator. The server and LLM.generate use DELTA."""

    CUMULATIVE = 0
    DELTA = 1


@dataclass
class SamplingParams:
    """temperature 0 = greedy. top_k 0 or -1 = off; top_p 1 = off; min_p 0 = off.
    Penalties as in vLLM/OpenAI: repetition (multiplicative, >1 discourages, over prompt+output),
    presence and frequency (additive, over output tokens). `logprobs`: None, or N top logprobs
    returned per generated token (plus the sampled token's).
    n: samples returned; best_of (>= n, None = n): samples generated, of which the n with the highest
    cumulative logprob are returned. With a seed, sample i draws from seed + i (vLLM's rule), so
    samples differ and the request is reproducible.
    prompt_logprobs: None, or N top logprobs per prompt token (vLLM's): the log_softmax of the model
    at every prompt position, the first entry None (nothing predicts it). max_tokens=0: no sampling,
    the request ends after its prompt (with prompt_logprobs: scoring only, finish_reason "length").
    logit_bias: token id -> additive bias in [-100, 100] on the logits before anything else.
    structured_outputs: a constraint (JSON schema, regex, choice, grammar, any JSON object) the output
    must match; each sample ends with finish_reason "stop" once the grammar accepts and cannot go on."""

    n: int = 1
    best_of: int | None = None
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None
    max_tokens: int | None = 16
    min_tokens: int = 0
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    logprobs: int | None = None
    skip_special_tokens: bool = True
    include_stop_str_in_output: bool = False
    prompt_logprobs: int | None = None
    logit_bias: dict[int, float] | None = None
    output_kind: RequestOutputKind = RequestOutputKind.CUMULATIVE
    structured_outputs: StructuredOutputsParams | None = None

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        self.stop = list(self.stop or [])
        self.stop_token_ids = list(self.stop_token_ids or [])
        if self.top_k == -1:
            self.top_k = 0
        self._validate()

    def _validate(self) -> None:
        def bad(name: str, why: str) -> ValueError:
            return ValueError(f"SamplingParams.{name}: {why}")

        if not isinstance(self.n, int) or self.n < 1:
            raise bad("n", f"{self.n!r} must be an integer >= 1")
        if self.best_of is not None and (not isinstance(self.best_of, int) or self.best_of < self.n):
            raise bad("best_of", f"{self.best_of!r} must be an integer >= n ({self.n})")
        if not 0.0 <= self.temperature <= 100.0:
            raise bad("temperature", f"{self.temperature} not in [0, 100]")
        if self.top_k < 0:
            raise bad("top_k", f"{self.top_k} must be >= 0 (or -1 for off)")
        if not 0.0 < self.top_p <= 1.0:
            raise bad("top_p", f"{self.top_p} not in (0, 1]")
        if not 0.0 <= self.min_p <= 1.0:
            raise bad("min_p", f"{self.min_p} not in [0, 1]")
        if not 0.0 < self.repetition_penalty <= 10.0:
            raise bad("repetition_penalty", f"{self.repetition_penalty} not in (0, 10]")
        for name in ("presence_penalty", "frequency_penalty"):
            if not -2.0 <= getattr(self, name) <= 2.0:
                raise bad(name, f"{getattr(self, name)} not in [-2, 2]")
        if self.max_tokens is not None and self.max_tokens < 0:
            raise bad("max_tokens", f"{self.max_tokens} must be >= 0 (0: prompt only, no sampling)")
        if self.min_tokens < 0 or (self.max_tokens is not None and self.min_tokens > self.max_tokens):
            raise bad("min_tokens", f"{self.min_tokens} must be in [0, max_tokens]")
        if len(self.stop) > MAX_STOP_STRINGS:
            raise bad("stop", f"{len(self.stop)} stop strings; at most {MAX_STOP_STRINGS}")
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise bad("stop", "stop strings must be non-empty strings")
        if any(not isinstance(t, int) or t < 0 for t in self.stop_token_ids):
            raise bad("stop_token_ids", "must be non-negative integers")
        if self.logprobs is not None and not 0 <= self.logprobs <= MAX_TOP_LOGPROBS:
            raise bad("logprobs", f"{self.logprobs} not in [0, {MAX_TOP_LOGPROBS}]")
        if self.prompt_logprobs is not None and not 0 <= self.prompt_logprobs <= MAX_TOP_LOGPROBS:
            raise bad("prompt_logprobs", f"{self.prompt_logprobs} not in [0, {MAX_TOP_LOGPROBS}]")
        if self.logit_bias:
            for t, b in self.logit_bias.items():
                if not isinstance(t, int) or t < 0:
                    raise bad("logit_bias", f"key {t!r} must be a non-negative token id")
                if not -100.0 <= b <= 100.0:
                    raise bad("logit_bias", f"bias {b} for token {t} not in [-100, 100]")
        if self.seed is not None and not isinstance(self.seed, int):
            raise bad("seed", f"{self.seed!r} must be an integer")
        so = self.structured_outputs
        if so is not None and not isinstance(so, StructuredOutputsParams):
            raise bad("structured_outputs", f"must be a StructuredOutputsParams, got {type(so).__name__}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @property
    def num_samples(self) -> int:
        """Sequences the engine runs for this request: best_of, else n."""
        return self.best_of if self.best_of is not None else self.n

    def for_sample(self, i: int) -> "SamplingParams":
        """The parameters of sample i of this request: one sequence (n = 1), its own seed. Ranking
        by cumulative logprob (best_of > n) needs the sampled tokens' logprobs: logprobs=0 asks the
        sampler for them without top-N alternatives."""
        logprobs = self.logprobs
        if logprobs is None and self.num_samples > self.n:
            logprobs = 0
        return replace(self, n=1, best_of=None, logprobs=logprobs,
                       seed=None if self.seed is None else self.seed + i)
