"""A real `amd-llama4 serve --no-ray --model tiny-scout` process for the tests that drive it with clients
we did not write (openai, lm-eval). Port 0: uvicorn picks a free port and we read it from its startup
line (no race with other tests for a port number). The server runs in its own session; teardown
always stops the whole group (SIGTERM, then SIGKILL), even when the test or the startup failed."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MODEL = "tiny-scout"
STARTUP_TIMEOUT_S = 120.0  # loading takes ~5 s on an idle machine; CI's 2 cores may be busy
_READY = re.compile(r"Uvicorn running on http://127\.0\.0\.1:(\d+)")


def need(module: str):
    """importorskip, except in CI (CI=true) where the test extras must be installed."""
    if os.environ.get("CI") == "true":
        return __import__(module)
    return pytest.importorskip(module)


@dataclass
class Served:
    url: str  # http://127.0.0.1:PORT (the OpenAI API is under /v1)
    model: str
    proc: subprocess.Popen
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    for sig, wait_s in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


def start_server(log_path: Path, *flags: str) -> Served:
    httpx = need("httpx")
    cmd = [sys.executable, "-m", "amd_llama4.cli", "serve", "--no-ray", "--model", MODEL, "--host", "127.0.0.1",
           "--port", "0", *flags]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("AMD_LLAMA4_API_KEY", None)  # no auth: the clients send a dummy key
    log = open(log_path, "wb")  # a file, not a pipe: the access log must never block the server
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    log.close()
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        port = None
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited ({proc.returncode}) during startup:\n"
                                   + log_path.read_text(errors="replace")[-3000:])
            if time.monotonic() > deadline:
                raise RuntimeError(f"server not ready after {STARTUP_TIMEOUT_S} s:\n"
                                   + log_path.read_text(errors="replace")[-3000:])
            if port is None:
                m = _READY.search(log_path.read_text(errors="replace"))
                port = int(m.group(1)) if m else None
            if port is not None:
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                        return Served(f"http://127.0.0.1:{port}", MODEL, proc, log_path)
                except httpx.TransportError:
                    pass
            time.sleep(0.2)
    except BaseException:
        _stop(proc)
        raise


@pytest.fixture(scope="session")
def served(tmp_path_factory):
    """One tiny-scout server shared by this folder's tests (startup is the slow part)."""
    # configured as a deployment would be: tool_choice auto parsed as Llama 4's pythonic calls
    srv = start_server(tmp_path_factory.mktemp("served") / "server.log",
                       "--enable-auto-tool-choice", "--tool-call-parser", "llama4_pythonic")
    try:
        yield srv
    finally:
        _stop(srv.proc)


@pytest.fixture(scope="session")
def served_random(tmp_path_factory):
    """tiny-scout with random weights (tests/clients/random_engine.py): the weakest model there is."""
    srv = start_server(tmp_path_factory.mktemp("served_random") / "server.log",
                       "--engine-factory", "tests.clients.random_engine:random_weights")
    try:
        yield srv
    finally:
        _stop(srv.proc)


@pytest.fixture(scope="session")
def direct_llm():
    """The same model in this process (the engine, no server): the direct computation that what the
    clients got through the API is compared with."""
    from amd_llama4 import LLM

    llm = LLM(MODEL)
    try:
        yield llm
    finally:
        llm.shutdown()
