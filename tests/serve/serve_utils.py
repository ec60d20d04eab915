"""Helpers for the serving tests (not in conftest.py: tests import these by module name)."""
from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import threading
import time
from typing import Any

import pytest


def need(module: str):
    """importorskip, except in CI (CI=true) where the serving stack must be installed."""
    if os.environ.get("CI") == "true":
        return __import__(module)
    return pytest.importorskip(module)


for _m in ("fastapi", "httpx", "prometheus_client", "uvicorn"):
    need(_m)

import httpx  # noqa: E402
import uvicorn  # noqa: E402

from fake_engine import FakeEngine  # noqa: E402


class Factory:
    """Engine factory that remembers every engine it built (a new one after each death)."""

    def __init__(self, **kwargs: Any) -> None:
        self.kwargs, self.engines = kwargs, []

    def __call__(self) -> FakeEngine:
        self.engines.append(FakeEngine(**self.kwargs))
        return self.engines[-1]

    @property
    def engine(self) -> FakeEngine:
        return self.engines[-1]


def run(coro, timeout: float = 60.0):
    """Runs a coroutine to completion with a hard time bound (no test can hang)."""
    import asyncio

    return asyncio.run(asyncio.wait_for(coro, timeout))


@contextlib.contextmanager
def hard_timeout(seconds: float):
    """Raises TimeoutError in the main thread after `seconds` (for tests whose blocking calls,
    like Ray's, have no timeout of their own)."""

    def fire(signum, frame):
        raise TimeoutError(f"test exceeded {seconds} s")

    old = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def asgi_client(app, **kw) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver",
                             timeout=kw.pop("timeout", 20.0), **kw)


def parse_sse(text: str) -> list[Any]:
    """SSE body -> list of decoded `data:` payloads ('[DONE]' kept as the string)."""
    events = []
    for block in text.split("\n\n"):
        block = block.strip()
        if not block:
            continue
        assert block.startswith("data: "), f"not an SSE data line: {block[:80]!r}"
        payload = block[len("data: "):]
        events.append(payload if payload == "[DONE]" else json.loads(payload))
    return events


class LiveServer:
    def __init__(self, app) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, log_level="warning", lifespan="off", timeout_graceful_shutdown=2)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> "LiveServer":
        self.thread.start()
        deadline = time.monotonic() + 15
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()
        assert not self.thread.is_alive(), "uvicorn did not stop"


def wait_until(cond, timeout: float = 5.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


@contextlib.contextmanager
def real_engine_server(max_queue: int, **engine_args):
    """The OpenAI app over the REAL engine (AsyncEngine.from_config(**engine_args)) on a live port;
    `.engines` lists every engine the provider built (a dead one is rebuilt). Shut down on exit."""
    from amd_llama4.engine.async_engine import AsyncEngine
    from amd_llama4.serve.app import build_app

    engines = []

    def factory():
        engines.append(AsyncEngine.from_config(**engine_args))
        return engines[-1]

    try:
        with LiveServer(build_app(factory, max_queue=max_queue)) as srv:
            srv.engines = engines
            yield srv
    finally:
        for e in engines:
            e.shutdown()


async def stream_events(client: httpx.AsyncClient, url: str, body: dict) -> list[Any]:
    """POST a streaming request; asserts 200 and a final [DONE] -> the parsed chunks before it."""
    lines = []
    async with client.stream("POST", url, json=body) as resp:
        assert resp.status_code == 200
        async for line in resp.aiter_lines():
            if line.startswith("data: "):
                lines.append(line[6:])
    assert lines[-1] == "[DONE]"
    return [json.loads(x) for x in lines[:-1]]
