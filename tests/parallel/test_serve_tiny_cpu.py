"""deploy/tiny-cpu.yaml end to end: Ray Serve, the real engine with tp=2 gloo workers, a chat request;
then a tensor-parallel worker is killed mid-stream: the stream ends with an error promptly, the engine
is rebuilt with fresh workers and the next request succeeds."""
import json
import os
import time

import pytest
import yaml

from amd_llama4.engine.tp.executor import free_port

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.mark.slow
def test_serve_tiny_cpu_yaml_answers_chat(ray_cluster):
    httpx = pytest.importorskip("httpx")
    from ray import serve

    from amd_llama4.serve.deployment import app_builder

    with open(os.path.join(HERE, "..", "..", "deploy", "tiny-cpu.yaml")) as f:
        app_cfg = yaml.safe_load(f)["applications"][0]
    assert app_cfg["args"]["tensor_parallel_size"] == 2
    port = free_port()
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(app_builder(app_cfg["args"]), name="amd-llama4", route_prefix="/", blocking=False)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as c:
            r = c.post("/v1/chat/completions", json={"model": "tiny-scout", "max_tokens": 8, "temperature": 0,
                                                     "messages": [{"role": "user", "content": "hi"}]})
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["choices"][0]["finish_reason"] in ("length", "stop")
            assert body["usage"]["completion_tokens"] >= 1
    finally:
        serve.shutdown()


@pytest.mark.slow
def test_worker_killed_mid_stream_fails_fast_then_recovers(ray_cluster):
    httpx = pytest.importorskip("httpx")
    import sys

    sys.path.insert(0, os.path.join(HERE, "..", "serve"))
    from serve_utils import LiveServer

    from amd_llama4.engine.async_engine import AsyncEngine
    from amd_llama4.serve.app import build_app

    engines = []

    def factory():
        engines.append(AsyncEngine.from_config(model="tiny-scout", tensor_parallel_size=2, max_model_len=1024))
        return engines[-1]

    body = {"model": "tiny-scout", "prompt": "tell me a long story", "max_tokens": 600, "ignore_eos": True,
            "stream": True}
    with LiveServer(build_app(factory)) as srv, httpx.Client(base_url=srv.url, timeout=60) as c:
        assert c.post("/v1/completions", json={"model": "tiny-scout", "prompt": "hi", "max_tokens": 3}).status_code == 200
        lines = []
        with c.stream("POST", "/v1/completions", json=body) as s:
            for line in s.iter_lines():
                if line:
                    lines.append(line)
                if len(lines) == 5:  # streaming: kill rank 1 now
                    ray_cluster.kill(engines[0].engine.runner.workers[1])
                    killed = time.monotonic()
        ended = time.monotonic() - killed
        assert lines[-1] == "data: [DONE]"
        errors = [json.loads(x[6:]) for x in lines[:-1] if '"error"' in x]
        assert errors, "the interrupted stream must carry an error chunk"
        assert ended < 30, f"stream took {ended:.1f} s to end after the kill"
        t0 = time.monotonic()
        r = c.post("/v1/completions", json={"model": "tiny-scout", "prompt": "again", "max_tokens": 4})
        recovery = time.monotonic() - t0
        assert r.status_code == 200, r.text
        assert len(engines) == 2  # a fresh engine with fresh workers
        print(f"stream ended {ended:.2f} s after the kill; next request served in {recovery:.2f} s")
    for e in engines:
        e.shutdown()
