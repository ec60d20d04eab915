"""`amd-llama4 serve --no-ray` as a real process (uvicorn on 127.0.0.1) with the fake engine."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

from serve_utils import need

HERE = os.path.dirname(os.path.abspath(__file__))


def test_serve_parser_registered():
    from amd_llama4.cli import build_parser

    args = build_parser().parse_args(["serve", "--model", "m", "--tensor-parallel-size", "8", "--expert-parallel",
                                      "--kv-cache-dtype", "fp8", "--no-ray", "--port", "9000"])
    assert (args.model, args.tensor_parallel_size, args.expert_parallel, args.no_ray) == ("m", 8, True, True)
    assert args.host == "127.0.0.1" and args.port == 9000 and args.func.__module__ == "amd_llama4.commands.serve"


def test_prefix_caching_flag():
    from amd_llama4.cli import build_parser
    from amd_llama4.commands._engine_flags import engine_kwargs

    for cmd in (["serve", "--model", "m"], ["generate", "--model", "m", "hi"]):
        parse = build_parser().parse_args
        assert "enable_prefix_caching" not in engine_kwargs(parse(cmd))  # EngineArgs' default applies
        assert engine_kwargs(parse(cmd + ["--no-enable-prefix-caching"]))["enable_prefix_caching"] is False
        assert engine_kwargs(parse(cmd + ["--enable-prefix-caching"]))["enable_prefix_caching"] is True


def test_serve_no_ray_process():
    httpx = need("httpx")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (HERE, os.environ.get("PYTHONPATH")) if p),
               AMD_LLAMA4_API_KEY="cli-key")
    cmd = [sys.executable, "-m", "amd_llama4.cli", "serve", "--model", "fake-cli", "--no-ray", "--host", "127.0.0.1",
           "--port", str(port), "--max-model-len", "100", "--engine-factory", "fake_engine:FakeEngine.from_config"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, proc.stdout.read().decode()[-2000:]
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "server did not come up"
            time.sleep(0.1)
        h = {"Authorization": "Bearer cli-key"}
        models = httpx.get(url + "/v1/models", headers=h, timeout=10).json()
        assert models["data"][0]["id"] == "fake-cli" and models["data"][0]["max_model_len"] == 100
        assert httpx.get(url + "/v1/models", timeout=10).status_code == 401
        r = httpx.post(url + "/v1/completions", headers=h, json={"prompt": "x", "max_tokens": 3}, timeout=10)
        assert r.status_code == 200 and r.json()["choices"][0]["text"] == "The"
    finally:
        proc.terminate()
        try:
            out, _ = proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate(timeout=5)
    log = out.decode()
    assert "cli-key" not in log  # the key is never logged
