"""Stopping `amd-llama4 serve` (real process, tiny-scout on CPU): SIGINT or SIGTERM, to the process
or to its process group as Ctrl-C sends it, ends it within 10 s with the port closed and no process
of its session left (TP worker actors and, on the Ray path, the local Ray cluster included). The
server starts with SIGINT ignored, as a shell starts background jobs (`make serve &`): the reported
case where SIGINT left the Ray path answering."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from serve_utils import need

STOP_WITHIN_S = 10.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _session_procs(sid: int) -> list[tuple[int, str]]:
    """Live (not zombie) processes of session `sid`: the server and all it started."""
    out = subprocess.run(["ps", "-eo", "pid=,sid=,stat=,args="], capture_output=True, text=True, check=True)
    procs = []
    for line in out.stdout.splitlines():
        pid, psid, stat, *args = line.split(None, 3)
        if int(psid) == sid and not stat.startswith("Z"):
            procs.append((int(pid), (args or [""])[0][:120]))
    return procs


def _start(port: int, *flags: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "amd_llama4.cli", "serve", "--model", "tiny-scout", "--host", "127.0.0.1",
           "--port", str(port), *flags]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    # A new session: its processes can be found (and Ctrl-C imitated by signalling the group).
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))


def _wait_ready(proc: subprocess.Popen, port: int, timeout: float) -> None:
    httpx = need("httpx")
    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, "server exited during startup:\n" + proc.stdout.read().decode()[-3000:]
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, f"server not answering /v1/models after {timeout} s"
        time.sleep(0.2)


def _stream_in_background(port: int) -> threading.Thread:
    """A long streamed completion in flight when the stop signal comes (it must not hold the stop)."""
    httpx = need("httpx")

    def run() -> None:
        body = {"model": "tiny-scout", "prompt": "hi", "max_tokens": 4000, "stream": True, "ignore_eos": True}
        try:
            with httpx.stream("POST", f"http://127.0.0.1:{port}/v1/completions", json=body, timeout=60) as r:
                for _ in r.iter_lines():
                    pass
        except httpx.HTTPError:
            pass  # cut by the stop: expected

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def _stop_and_check(proc: subprocess.Popen, port: int, sig: int, group: bool,
                    within_s: float = STOP_WITHIN_S) -> None:
    sid = proc.pid
    assert _port_open(port)
    t0 = time.monotonic()
    if group:
        os.killpg(proc.pid, sig)
    else:
        proc.send_signal(sig)
    try:
        rc = proc.wait(timeout=within_s)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{signal.Signals(sig).name} did not stop the server within {within_s} s "
                    f"(port still open: {_port_open(port)})")
    took = time.monotonic() - t0
    log = proc.stdout.read().decode()
    # 0, or the signal's own status (uvicorn re-raises it; Ray's handler exits with its number);
    # never a crash such as -6 (abort: an engine step still running at interpreter exit)
    assert rc in (0, -sig, sig, 128 + sig), f"exit status {rc} after {signal.Signals(sig).name}:\n{log[-3000:]}"
    assert not _port_open(port), f"port {port} still answers after the server exited"
    deadline = time.monotonic() + 5  # Ray's processes exit right after the driver's ray.shutdown()
    while _session_procs(sid) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = _session_procs(sid)
    assert not left, f"processes of the stopped server still running {took:.1f} s after the signal: {left}"


@pytest.fixture
def cleanup():
    """Kills (by pid) whatever a failed test left of the server's session."""
    started: list[subprocess.Popen] = []
    yield started.append
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        for pid, _ in _session_procs(proc.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait(timeout=10)


@pytest.mark.parametrize("sig,group,flags,inflight,within_s", [
    # TP worker actors (a local Ray the engine starts) torn down
    (signal.SIGINT, False, ("--tensor-parallel-size", "2"), False, STOP_WITHIN_S),
    # Ctrl-C in a terminal (the whole foreground group) during a stream: drained, then no abort
    (signal.SIGINT, True, (), True, STOP_WITHIN_S),
    (signal.SIGTERM, False, (), False, 3.0),  # idle: SIGTERM stays immediate
], ids=["sigint-process-tp2", "sigint-group-streaming", "sigterm-process"])
def test_no_ray_stops(sig, group, flags, inflight, within_s, cleanup):
    need("uvicorn")
    port = _free_port()
    proc = _start(port, "--no-ray", *flags)
    cleanup(proc)
    _wait_ready(proc, port, timeout=120)
    if inflight:
        _stream_in_background(port)
        time.sleep(1.0)  # the stream is being served
    _stop_and_check(proc, port, sig, group, within_s)


@pytest.mark.slow
def test_ray_stops_on_sigint(cleanup):
    need("ray.serve")
    port = _free_port()
    proc = _start(port, "--tensor-parallel-size", "2")
    cleanup(proc)
    _wait_ready(proc, port, timeout=240)
    _stream_in_background(port)
    time.sleep(1.0)
    _stop_and_check(proc, port, signal.SIGINT, group=False)


def test_ray_shutdown_is_bounded(monkeypatch):
    """A Serve shutdown that hangs (replicas draining long requests) does not hold the stop: Ray is
    shut down after SHUTDOWN_GRACE_S regardless."""
    from amd_llama4.serve import local

    monkeypatch.setattr(local, "SHUTDOWN_GRACE_S", 0.3)
    release, calls = threading.Event(), []

    class Serve:
        @staticmethod
        def shutdown():
            calls.append("serve")
            release.wait(30)

    class Ray:
        @staticmethod
        def is_initialized():
            return True

        @staticmethod
        def shutdown():
            calls.append("ray")

    t0 = time.monotonic()
    try:
        local._shutdown_ray(Ray, Serve)
    finally:
        release.set()
    assert calls == ["serve", "ray"] and time.monotonic() - t0 < 5

    calls.clear()
    Ray.is_initialized = staticmethod(lambda: False)  # interrupted before ray.init(): nothing to look up
    local._shutdown_ray(Ray, Serve)
    assert calls == ["ray"]


def test_signal_handler_overrides_inherited_ignore():
    """SIGINT ignored at start (a background job) still raises KeyboardInterrupt once installed."""
    from amd_llama4.serve.local import _stop_on_signals

    old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        _stop_on_signals()
        with pytest.raises(KeyboardInterrupt, match="SIGINT"):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)  # the handler runs in the main thread at the next bytecode
        # now armed to force-exit on a second signal: not the ignore, not the first handler
        assert signal.getsignal(signal.SIGINT) not in (signal.SIG_IGN, signal.default_int_handler)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
