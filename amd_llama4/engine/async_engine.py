"""AsyncEngine: the LLMEngine driven by one background thread, with asyncio streams per request.

Requests from many clients join the same running batch. The engine thread owns the LLMEngine;
other threads only enqueue commands (add, abort), which it applies between steps. A failure inside
a step ends every in-flight request with an error (nothing hangs) and marks the engine dead.
"""
from __future__ import annotations

import asyncio
import queue
import threading
from typing import AsyncIterator

from amd_llama4.engine.llm_engine import EngineArgs, LLMEngine
from amd_llama4.engine.outputs import RequestOutput
from amd_llama4.engine.sampling_params import SamplingParams


class EngineDeadError(RuntimeError):
    pass


class AsyncEngine:
    def __init__(self, engine: LLMEngine, model_name: str | None = None):
        self.engine = engine
        self.model_name = model_name or engine.args.model
        self.max_model_len = engine.max_model_len
        self.tokenizer = engine.tokenizer
        self.vocab_size = engine.config.vocab_size
        self._commands: queue.Queue = queue.Queue()
        self._streams: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = {}
        self._wake = threading.Event()
        self._dead: str | None = None
        self._stats = engine.stats()
        self._thread = threading.Thread(target=self._loop, name="amd-llama4-engine", daemon=True)
        self._thread.start()

    @classmethod
    def from_config(cls, **engine_args) -> "AsyncEngine":
        name = engine_args.pop("served_model_name", None)
        return cls(LLMEngine(EngineArgs(**engine_args)), name)

    # -- public API (any thread / event loop) -------------------------------------------------------
    async def generate(self, prompt: str | list[int], params: SamplingParams, request_id: str,
                       multi_modal_data: dict | None = None) -> AsyncIterator[RequestOutput]:
        """multi_modal_data: {"image": [PIL images]} for the prompt's `<|image|>` tokens (expanded and
        checked by the engine; a mismatch ends the stream with a ValueError)."""
        if self._dead:
            raise EngineDeadError(f"engine is dead: {self._dead}")
        if request_id in self._streams:
            raise ValueError(f"request id {request_id!r} is already in use")
        # Validate here so the caller gets a ValueError before the stream starts.
        _, ids = self.engine.encode(prompt)
        if len(ids) >= self.max_model_len:
            raise ValueError(f"prompt has {len(ids)} tokens; max_model_len is {self.max_model_len}")
        loop = asyncio.get_running_loop()
        q: asyncio.Queue = asyncio.Queue()
        self._streams[request_id] = (loop, q)
        self._commands.put(("add", request_id, ids, params, multi_modal_data))
        self._wake.set()
        finished = False
        try:
            while True:
                item = await q.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
                if item.finished:
                    finished = True
                    return
        finally:
            self._streams.pop(request_id, None)
            if not finished:  # consumer went away (disconnect, timeout, cancel): free the blocks
                self._commands.put(("abort", request_id))
                self._wake.set()

    async def abort(self, request_id: str) -> None:
        self._commands.put(("abort", request_id))
        self._wake.set()

    def stats(self) -> dict:
        return dict(self._stats)

    async def check_health(self) -> None:
        if self._dead or not self._thread.is_alive():
            raise EngineDeadError(f"engine is dead: {self._dead or 'engine thread exited'}")

    def shutdown(self) -> None:
        self._commands.put(("stop",))
        self._wake.set()
        self._thread.join(timeout=10)
        self.engine.shutdown()

    # -- engine thread --------------------------------------------------------------------------------
    def _send(self, request_id: str, item) -> None:
        target = self._streams.get(request_id)
        if target is not None:
            loop, q = target
            try:
                loop.call_soon_threadsafe(q.put_nowait, item)
            except RuntimeError:  # the client's loop is closed: nobody is listening
                pass

    def _apply_commands(self) -> bool:
        while True:
            try:
                cmd = self._commands.get_nowait()
            except queue.Empty:
                return True
            if cmd[0] == "stop":
                return False
            if cmd[0] == "add":
                _, rid, prompt, params, mm = cmd
                try:
                    self.engine.add_request(rid, prompt, params, multi_modal_data=mm)
                except Exception as e:  # noqa: BLE001 - bad input ends only this request
                    self._send(rid, ValueError(str(e)))
            elif cmd[0] == "abort":
                out = self.engine.abort(cmd[1])
                if out is not None:
                    self._send(cmd[1], out)

    def _loop(self) -> None:
        try:
            while self._apply_commands():
                if not self.engine.has_unfinished():
                    self._stats = self.engine.stats()
                    self._wake.wait(timeout=0.5)
                    self._wake.clear()
                    continue
                outputs = self.engine.step()
                self._stats = self.engine.stats()  # before the outputs, so a finished client sees idle stats
                for out in outputs:
                    self._send(out.request_id, RuntimeError(out.error) if out.error else out)
        except Exception as e:  # noqa: BLE001 - a dead engine must fail every stream, not hang them
            self._dead = f"{type(e).__name__}: {e}"
            for rid in list(self._streams):
                self._send(rid, EngineDeadError(self._dead))
