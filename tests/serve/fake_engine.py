"""A fake AsyncEngine for the serving tests: byte-level tokenizer, deterministic output, KV block
accounting, stop strings/ids, logprobs, abort, and a `die()` switch.

Importable as `fake_engine` (tests/serve is on sys.path under pytest); the Ray test passes the
factory string "fake_engine:FakeEngine.from_config" with tests/serve on PYTHONPATH."""
from __future__ import annotations

import asyncio
import math
import time
from typing import Any, AsyncIterator

from amd_llama4.engine.outputs import CompletionOutput, Logprob, RequestOutput
from amd_llama4.engine.sampling_params import SamplingParams

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
                "kv_blocks_total": self.kv_blocks_total, "kv_usage": used / self.kv_blocks_total}

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
        self._blocks[request_id] = math.ceil(len(prompt_ids) / self.block_size)
        ids: list[int] = []
        lps: list[tuple[Logprob, list[Logprob]]] | None = [] if params.logprobs is not None else None
        limit = params.max_tokens or (self.max_model_len - len(prompt_ids))
        try:
            while True:
                delay = 3600.0 if self.stall_after is not None and len(ids) >= self.stall_after else self.step_delay_s
                await self._wait_step(request_id, delay)
                if request_id not in self._blocks:  # aborted
                    out = CompletionOutput(0, self.tokenizer.decode(ids), list(ids), "abort")
                    yield RequestOutput(request_id, None, prompt_ids, [out], finished=True)
                    return
                finish, stop_reason = None, None
                for _ in range(self.tokens_per_step):
                    tok = self.reply_ids[len(ids) % len(self.reply_ids)]
                    ids.append(tok)
                    if lps is not None:
                        alts = [Logprob(tok, -0.25)] + [Logprob(3 + ord("a") + k, -1.0 - k) for k in range(params.logprobs - 1)]
                        lps.append((Logprob(tok, -0.25), alts[: params.logprobs]))
                    if tok in params.stop_token_ids:
                        finish, stop_reason = "stop", tok
                    elif len(ids) >= limit:
                        finish = "length"
                    if finish:
                        break
                text = self.tokenizer.decode(ids)
                for s in params.stop:
                    if s in text:
                        text, finish, stop_reason = text[: text.index(s)], "stop", s
                        break
                self._blocks[request_id] = math.ceil((len(prompt_ids) + len(ids)) / self.block_size)
                out = CompletionOutput(0, text, list(ids), finish, stop_reason, list(lps) if lps is not None else None)
                yield RequestOutput(request_id, prompt if isinstance(prompt, str) else None, prompt_ids, [out],
                                    finished=finish is not None)
                if finish:
                    return
        finally:
            self._blocks.pop(request_id, None)


def expected_text(n: int) -> str:
    """What FakeEngine generates in n tokens (no stop)."""
    return (REPLY * (n // len(REPLY) + 1))[:n]
