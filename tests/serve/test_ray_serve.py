"""The Ray Serve deployment end to end with the fake engine: serve.run, chat requests through
Ray's HTTP proxy on 127.0.0.1, shutdown. Slow (~15-30 s on 2 cores)."""
from __future__ import annotations

import json
import os
import shutil
import tempfile

import pytest
from serve_utils import hard_timeout, need

from amd_llama4.engine.tp.executor import free_port
from fake_engine import expected_text

HERE = os.path.dirname(os.path.abspath(__file__))


def test_split_args_coerces_cli_strings():
    need("ray.serve")
    from amd_llama4.serve.deployment import split_args
    from amd_llama4.serve.engine_provider import load_factory

    engine, app = split_args({"model": "m", "tensor_parallel_size": "8", "expert_parallel": "true",
                              "max_model_len": "4096", "max_queue": "32", "request_timeout_s": "5",
                              "api_key": "k", "kv_cache_dtype": "fp8", "max_num_seqs": None})
    assert engine == {"model": "m", "tensor_parallel_size": 8, "expert_parallel": True, "max_model_len": 4096,
                      "kv_cache_dtype": "fp8"}
    assert app == {"max_queue": 32, "request_timeout_s": 5.0, "api_key": "k"}
    assert split_args({"model": "m", "enable_prefix_caching": "false"})[0] == {"model": "m",
                                                                           "enable_prefix_caching": False}
    assert split_args({"model": "m", "enable_prefix_caching": True})[0]["enable_prefix_caching"] is True
    with pytest.raises(ValueError, match="model"):
        split_args({"tensor_parallel_size": 2})
    with pytest.raises(ValueError):
        split_args({"model": "m", "expert_parallel": "maybe"})
    assert load_factory("fake_engine:FakeEngine.from_config").__name__ == "from_config"
    with pytest.raises(ValueError):
        load_factory("no_colon_here")


def test_deploy_configs_are_valid():
    yaml = need("yaml")
    need("ray.serve")
    from ray.serve.schema import ServeDeploySchema

    from amd_llama4.serve.deployment import LLMServer, split_args

    deploy = os.path.join(HERE, "..", "..", "deploy")
    names = sorted(f for f in os.listdir(deploy) if f.endswith(".yaml"))
    assert names == ["maverick-fp8-h200.yaml", "maverick-fp8-mi300x.yaml", "scout-mi300x.yaml", "tiny-cpu.yaml"]
    for name in names:
        with open(os.path.join(deploy, name)) as f:
            cfg = yaml.safe_load(f)
        ServeDeploySchema.model_validate(cfg)
        (app,) = cfg["applications"]
        assert app["import_path"] == "amd_llama4.serve.deployment:app_builder", name
        engine_args, app_opts = split_args(app["args"])
        (dep,) = app["deployments"]
        assert dep["name"] == "LLMServer"
        LLMServer.options(**{k: v for k, v in dep.items() if k != "name"})  # Ray's own option checks
        assert dep["max_ongoing_requests"] > app_opts["max_queue"], name  # our 429 answers first
        opts = dep["ray_actor_options"]
        assert 0 < opts["num_cpus"] <= 1, name
        if "mi300x" in name:
            assert opts["accelerator_type"] == "AMD-Instinct-MI300X-OAM"
            assert app["runtime_env"]["env_vars"]["RAY_EXPERIMENTAL_NOSET_HIP_VISIBLE_DEVICES"] == "1"
        if "maverick" in name:
            assert engine_args["tensor_parallel_size"] == 8 and engine_args["kv_cache_dtype"].startswith("fp8")


@pytest.mark.slow
def test_serve_run_with_fake_engine(monkeypatch):
    ray = need("ray")
    need("ray.serve")
    httpx = need("httpx")
    from ray import serve

    from amd_llama4.serve.deployment import app_builder

    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    # Ray workers import the fake engine by name: put tests/serve on their path.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (HERE, os.environ.get("PYTHONPATH")) if p))
    tmp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths are length-limited
    port = free_port()
    with hard_timeout(240):
        try:
            ray.init(num_cpus=2, include_dashboard=False, _temp_dir=tmp, log_to_driver=False)
            serve.start(http_options={"host": "127.0.0.1", "port": port})
            serve.run(app_builder({"model": "fake-ray", "max_model_len": 128, "api_key": "ray-key",
                                   "engine_factory": "fake_engine:FakeEngine.from_config", "max_queue": "8"}),
                      name="amd-llama4", route_prefix="/", blocking=False)
            h = {"Authorization": "Bearer ray-key"}
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as c:
                r = c.post("/v1/chat/completions", headers=h,
                           json={"model": "fake-ray", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 6})
                assert r.status_code == 200, r.text
                assert r.json()["choices"][0]["message"]["content"] == expected_text(6)
                with c.stream("POST", "/v1/completions", headers=h,
                              json={"prompt": "x", "max_tokens": 5, "stream": True}) as s:
                    lines = [line for line in s.iter_lines() if line]
                assert lines[-1] == "data: [DONE]"
                text = "".join(json.loads(x[6:])["choices"][0]["text"] for x in lines[:-1])
                assert text == expected_text(5)
                assert c.get("/v1/models").status_code == 401
                assert c.get("/health").status_code == 200
                assert c.post("/v1/completions", headers=h, json={"prompt": "x", "top_p": 7}).status_code == 400
        finally:
            try:
                serve.shutdown()
            finally:
                ray.shutdown()
                shutil.rmtree(tmp, ignore_errors=True)
