"""A fake AsyncEngine for the serving tests: byte-level tokenizer, deterministic output, KV block
accounting, stop strings/ids, logprobs, n/best_of samples, DELTA or CUMULATIVE outputs (as the real
engine, SamplingParams.output_kind), abort, and a `die()` switch.

Importable as `fake_engine` (tests/serve is on sys.path under pytest); the Ray test passes the
factory string "fake_engine:FakeEngine.from_config" with tests/serve on PYTHONPATH."""
from __future__ import annotations

import asyncio
import math
import time
from typing import Any, AsyncIterator

from amd_llama4.engine.outputs import CompletionOutput, Logprob, RequestOutput, select_best
from amd_llama4.engine.sampling_params import RequestOutputKind, SamplingParams

REPLY = "The quick brown fox jumps over the lazy dog. "


class FakeTokenizer:
    """One token per UTF-8 byte, shifted by 3; 1 = BOS, 2 = EOS."""

    bos_token_id, eos_token_id, offset = 1, 2, 3
    vocab_size = 256 + 3
    eos_token_ids = [2]

    def encode(self, text: str, add_bos: bool = True) -> list[int]:
        return ([self.bos_token_id] if add_bos else []) + [b + self.offset for b in text.encode("utf-8")]

    def decode(self, ids: list[int]) -> str:
        return bytes(i - self.offset for i in ids if self.offset <= i < self.vocab_size).decode("utf-8", "replace")

    def id_to_token(self, i: int) -> str:
        return self.decode([i])

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True,
                            tokenize: bool = False) -> str | list[int]:
        if not messages:
            raise ValueError("no messages")
        text = ""
        for m in messages:
            if m.get("role") not in ("system", "developer", "user", "assistant", "tool", "ipython"):
                raise ValueError(f"bad role {m.get('role')!r}")
            if not isinstance(m.get("content"), str) or "\x00" in m["content"]:
                raise ValueError("content must be a string without NUL")
            text += f"<|{m['role']}|>{m['content']}\n"
        if add_generation_prompt:
            text += "<|assistant|>"
        return self.encode(text, add_bos=True) if tokenize else text


class FakeEngine:
    """Each step (every `step_delay_s`) appends the next byte of REPLY (cycling). After
    `stall_after` tokens it stops making progress (to test timeouts). `die()` makes every running
    and later generate() raise RuntimeError."""

    def __init__(self, model_name: str = "fake-llama4", max_model_len: int = 256, step_delay_s: float = 0.001,
                 stall_after: int | None = None, kv_blocks_total: int = 1024, block_size: int = 4,
                 tokens_per_step: int = 1, **engine_args: Any) -> None:
        self.model_name, self.max_model_len = model_name, max_model_len
        self.step_delay_s, self.stall_after = step_delay_s, stall_after
        self.kv_blocks_total, self.block_size, self.tokens_per_step = kv_blocks_total, block_size, tokens_per_step
        self.engine_args = engine_args
        self.tokenizer = FakeTokenizer()
        self.reply_ids = self.tokenizer.encode(REPLY, add_bos=False)
        self.dead = False
        self.started: list[str] = []
        self.aborted: list[str] = []
        self.params: dict[str, SamplingParams] = {}
        self._blocks: dict[str, int] = {}  # request id -> KV blocks held
        # prefix cache: a prompt seen before hits its full blocks (tokens, as the engine counts)
        self._seen_prompts: set[tuple[int, ...]] = set()
        self.prefix_queries = self.prefix_hits = 0

    @classmethod
    def from_config(cls, **engine_args: Any) -> "FakeEngine":
        args = dict(engine_args)
        return cls(model_name=str(args.pop("model", "fake-llama4")), max_model_len=int(args.pop("max_model_len", 0) or 256),
                   **args)

    # -- test hooks ---------------------------------------------------------------------------
    def die(self) -> None:
        self.dead = True

    @property
    def kv_blocks_used(self) -> int:
        return sum(self._blocks.values())

    # -- the AsyncEngine interface ------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        used = self.kv_blocks_used
        return {"num_running": len(self._blocks), "num_waiting": 0, "kv_blocks_used": used,
                "kv_blocks_total": self.kv_blocks_total, "kv_usage": used / self.kv_blocks_total,
                "prefix_cache_queries": self.prefix_queries, "prefix_cache_hits": self.prefix_hits}

    async def check_health(self) -> None:
        if self.dead:
            raise RuntimeError("fake engine is dead")

    async def abort(self, request_id: str) -> None:
        self.aborted.append(request_id)
        self._blocks.pop(request_id, None)

    async def _wait_step(self, request_id: str, delay: float) -> None:
        end = time.monotonic() + delay
        while True:  # short sleeps so die()/abort() from any thread are noticed quickly
            if self.dead:
                raise RuntimeError("fake engine died")
            if request_id not in self._blocks:
                return
            left = end - time.monotonic()
            if left <= 0:
                return
            await asyncio.sleep(min(left, 0.01))

    async def generate(self, prompt: str | list[int], params: SamplingParams,
                       request_id: str) -> AsyncIterator[RequestOutput]:
        if self.dead:
            raise RuntimeError("fake engine is dead")
        prompt_ids = self.tokenizer.encode(prompt) if isinstance(prompt, str) else list(prompt)
        if len(prompt_ids) >= self.max_model_len:
            raise ValueError(f"prompt of {len(prompt_ids)} tokens exceeds max_model_len {self.max_model_len}")
        if request_id in self._blocks:
            raise ValueError(f"duplicate request id {request_id}")
        self.started.append(request_id)
        self.params[request_id] = params
        self.prefix_queries += len(prompt_ids)
        if tuple(prompt_ids) in self._seen_prompts:
            self.prefix_hits += len(prompt_ids) // self.block_size * self.block_size
        self._seen_prompts.add(tuple(prompt_ids))
        samples = [_Sample(i, params, self) for i in range(params.num_samples)]
        prompt_blocks = len(prompt_ids) // self.block_size  # full prompt blocks: held once (prefix cache)
        self._blocks[request_id] = prompt_blocks + len(samples)
        limit = self.max_model_len - len(prompt_ids) if params.max_tokens is None else params.max_tokens
        delta = params.output_kind is RequestOutputKind.DELTA
        text_prompt = prompt if isinstance(prompt, str) else None
        plp = _prompt_logprobs(prompt_ids, params.prompt_logprobs)
        try:
            if limit == 0:  # scoring only: no sampling
                for s in samples:
                    s.finish = "length"
                yield RequestOutput(request_id, text_prompt, prompt_ids, [s.output(delta) for s in samples],
                                    finished=True, prompt_logprobs=plp)
                return
            while True:
                running = [s for s in samples if s.finish is None]
                delay = (3600.0 if self.stall_after is not None and len(running[0].ids) >= self.stall_after
                         else self.step_delay_s)
                await self._wait_step(request_id, delay)
                if request_id not in self._blocks:  # aborted
                    for s in running:
                        s.finish = "abort"
                    outs = [s.output(delta) for s in (running if delta else samples)]
                    yield RequestOutput(request_id, text_prompt, prompt_ids, outs, finished=True)
                    return
                for s in running:
                    s.step(limit)
                self._blocks[request_id] = prompt_blocks + sum(
                    math.ceil((len(prompt_ids) + len(s.ids)) / self.block_size) - prompt_blocks for s in samples)
                done = all(s.finish is not None for s in samples)
                if delta:  # one output per sample that moved, as the real engine
                    for k, s in enumerate(running):
                        yield RequestOutput(request_id, text_prompt, prompt_ids, [s.output(True)],
                                            finished=done and k == len(running) - 1, prompt_logprobs=plp)
                        plp = None  # DELTA: only in the first output
                else:
                    outs = [s.output(False) for s in samples]
                    yield RequestOutput(request_id, text_prompt, prompt_ids,
                                        select_best(outs, params.n) if done else outs, finished=done,
                                        prompt_logprobs=plp)
                if done:
                    return
        finally:
            self._blocks.pop(request_id, None)


def _prompt_logprobs(prompt_ids: list[int], k: int | None) -> list | None:
    """As the engine's: None first, then (prompt token at -0.5 - 0.01 * position, k alternatives)."""
    if k is None:
        return None
    alts = [Logprob(3 + ord("a") + j, -0.1 - j) for j in range(k)]
    return [None] + [(Logprob(t, -0.5 - 0.01 * i), list(alts)) for i, t in enumerate(prompt_ids[1:], 1)]


class _Sample:
    """One sample of a FakeEngine request: sample i replies REPLY starting i bytes in, with logprob
    -0.25 * (i + 1) per token (so best_of keeps the lowest indices)."""

    def __init__(self, index: int, params: SamplingParams, engine: FakeEngine) -> None:
        self.index, self.params, self.engine = index, params, engine
        self.ids: list[int] = []
        self.lps: list | None = [] if params.logprobs is not None else None
        self.finish: str | None = None
        self.stop_reason: Any = None
        self.text = ""
        self.sent_ids = self.sent_text = self.sent_lps = 0

    def step(self, limit: int) -> None:
        p, reply = self.params, self.engine.reply_ids
        for _ in range(self.engine.tokens_per_step):
            tok = reply[(len(self.ids) + self.index) % len(reply)]
            self.ids.append(tok)
            if self.lps is not None:
                lp = -0.25 * (self.index + 1)
                alts = [Logprob(tok, lp)] + [Logprob(3 + ord("a") + k, -1.0 - k) for k in range(p.logprobs - 1)]
                self.lps.append((Logprob(tok, lp), alts[: p.logprobs]))
            if tok in p.stop_token_ids:
                self.finish, self.stop_reason = "stop", tok
            elif len(self.ids) >= limit:
                self.finish = "length"
            if self.finish:
                break
        self.text = self.engine.tokenizer.decode(self.ids)
        for stop in p.stop:
            if stop in self.text:
                self.text, self.finish, self.stop_reason = self.text[: self.text.index(stop)], "stop", stop
                break

    def output(self, delta: bool) -> CompletionOutput:
        cum = -0.25 * (self.index + 1) * len(self.ids)
        if not delta:
            return CompletionOutput(self.index, self.text, list(self.ids), self.finish, self.stop_reason,
                                    list(self.lps) if self.lps is not None else None, cum)
        end = len(self.text)
        if self.finish is None:  # hold back a tail that may still become a stop string (as the engine)
            end -= max((k for stop in self.params.stop for k in range(1, len(stop))
                        if self.text.endswith(stop[:k])), default=0)
        out = CompletionOutput(self.index, self.text[self.sent_text:end], self.ids[self.sent_ids:], self.finish,
                               self.stop_reason, self.lps[self.sent_lps:] if self.lps is not None else None, cum)
        self.sent_ids, self.sent_text = len(self.ids), max(self.sent_text, end)
        self.sent_lps = len(self.lps) if self.lps is not None else 0
        return out


def expected_text(n: int) -> str:
    """What FakeEngine generates in n tokens (no stop)."""
    return (REPLY * (n // len(REPLY) + 1))[:n]
