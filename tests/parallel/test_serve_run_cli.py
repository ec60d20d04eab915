"""The literal deployment path: `serve run` on deploy/tiny-cpu.yaml (its own local Ray, tp=2 gloo
workers) answers a chat request; the only change to the file is a free port."""
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from amd_llama4.engine.tp.executor import free_port

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")


@pytest.mark.slow
def test_serve_run_tiny_cpu_yaml(tmp_path):
    httpx = pytest.importorskip("httpx")
    serve_bin = os.path.join(os.path.dirname(sys.executable), "serve")
    if not os.path.exists(serve_bin):
        if os.environ.get("CI") == "true":
            raise AssertionError("the `serve` CLI (ray[serve]) is not installed")
        pytest.skip("ray[serve] CLI not installed")
    with open(os.path.join(ROOT, "deploy", "tiny-cpu.yaml")) as f:
        cfg = yaml.safe_load(f)
    port = free_port()
    cfg["http_options"]["port"] = port
    config = tmp_path / "tiny-cpu.yaml"
    config.write_text(yaml.safe_dump(cfg))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # its own local Ray
    env.update(RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0", PYTHONPATH=os.path.abspath(ROOT))
    log = open(tmp_path / "serve.log", "w")
    proc = subprocess.Popen([serve_bin, "run", str(config)], cwd=tmp_path, env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as c:
            while True:
                assert proc.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
                try:
                    if c.get("/health").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert time.monotonic() < deadline, "serve run did not become healthy in 240 s"
                time.sleep(1)
            r = c.post("/v1/chat/completions", json={"model": "tiny-scout", "max_tokens": 6, "temperature": 0,
                                                     "messages": [{"role": "user", "content": "hi"}]})
            assert r.status_code == 200, r.text
            assert r.json()["usage"]["completion_tokens"] >= 1
    finally:
        _stop(proc)
        log.close()


def _stop(proc: subprocess.Popen) -> None:
    """Ctrl-C to the whole group (serve run then shuts its app and its local Ray down); SIGKILL if slow."""
    for sig, wait in ((signal.SIGINT, 60), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue
