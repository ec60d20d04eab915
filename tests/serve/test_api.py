"""The OpenAI-compatible endpoints over the fake engine, in process (httpx ASGI transport)."""
from __future__ import annotations

import re

from serve_utils import asgi_client, parse_sse, run

from fake_engine import REPLY, expected_text


def _post(app, path, body, **kw):
    async def go():
        async with asgi_client(app) as c:
            return await c.post(path, json=body, **kw)

    return run(go())


def _get(app, path, **kw):
    async def go():
        async with asgi_client(app) as c:
            return await c.get(path, **kw)

    return run(go())


def test_models(make_app):
    app, factory = make_app({"max_model_len": 300})
    r = _get(app, "/v1/models")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "list"
    assert [m["id"] for m in body["data"]] == ["fake-llama4"]
    assert body["data"][0]["max_model_len"] == 300
    assert len(factory.engines) == 1  # built lazily, once


def test_served_model_name_overrides(make_app):
    app, _ = make_app(served_model_name="llama4-scout")
    assert _get(app, "/v1/models").json()["data"][0]["id"] == "llama4-scout"
    r = _post(app, "/v1/completions", {"model": "llama4-scout", "prompt": "hi", "max_tokens": 3})
    assert r.status_code == 200, r.text
    assert r.json()["model"] == "llama4-scout"


def test_completion_non_streaming(make_app):
    app, factory = make_app()
    r = _post(app, "/v1/completions", {"model": "fake-llama4", "prompt": "Hello", "max_tokens": 7,
                                       "temperature": 0})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "text_completion" and body["id"].startswith("cmpl-")
    assert r.headers["x-request-id"] == body["id"]
    choice = body["choices"][0]
    assert choice["text"] == expected_text(7)
    assert choice["finish_reason"] == "length"
    # byte tokenizer: 5 bytes + BOS
    assert body["usage"] == {"prompt_tokens": 6, "completion_tokens": 7, "total_tokens": 13}
    params = factory.engine.params[body["id"]]
    assert params.temperature == 0.0 and params.max_tokens == 7
    assert factory.engine.kv_blocks_used == 0 and factory.engine.aborted == []


def test_completion_prompt_forms(make_app):
    app, factory = make_app()
    for prompt, n_prompt in (([5, 6, 7], 3), ([[5, 6, 7, 8]], 4), (["abc"], 4), ("", 1)):
        r = _post(app, "/v1/completions", {"prompt": prompt, "max_tokens": 2})
        assert r.status_code == 200, (prompt, r.text)
        assert r.json()["usage"]["prompt_tokens"] == n_prompt


def test_completion_sampling_params_mapped(make_app):
    app, factory = make_app()
    r = _post(app, "/v1/completions", {
        "prompt": "x", "max_tokens": 5, "temperature": 0.7, "top_p": 0.9, "top_k": 40, "min_p": 0.05,
        "seed": 1234, "presence_penalty": 0.5, "frequency_penalty": -0.5, "repetition_penalty": 1.1,
        "stop": "zz", "stop_token_ids": [9], "ignore_eos": True, "min_tokens": 2, "user": "u1"})
    assert r.status_code == 200, r.text
    p = factory.engine.params[r.json()["id"]]
    assert (p.temperature, p.top_p, p.top_k, p.min_p, p.seed) == (0.7, 0.9, 40, 0.05, 1234)
    assert (p.presence_penalty, p.frequency_penalty, p.repetition_penalty) == (0.5, -0.5, 1.1)
    assert p.stop == ["zz"] and p.stop_token_ids == [9] and p.ignore_eos and p.min_tokens == 2


def test_completion_max_tokens_default_fills_context(make_app):
    app, _ = make_app({"max_model_len": 40})
    r = _post(app, "/v1/completions", {"prompt": "abc", "max_tokens": None})
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["completion_tokens"] == 40 - 4


def test_completion_stop_string(make_app):
    app, _ = make_app()
    r = _post(app, "/v1/completions", {"prompt": "x", "max_tokens": 30, "stop": ["brown"]})
    choice = r.json()["choices"][0]
    assert choice["text"] == "The quick " and choice["finish_reason"] == "stop"
    assert choice["stop_reason"] == "brown"


def test_completion_streaming_matches_non_streaming(make_app):
    app, _ = make_app()
    r = _post(app, "/v1/completions", {"prompt": "Hi", "max_tokens": 12, "stream": True,
                                       "stream_options": {"include_usage": True}})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/event-stream")
    events = parse_sse(r.text)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(c["object"] == "text_completion" for c in chunks)
    text_chunks = [c for c in chunks if c["choices"]]
    assert "".join(c["choices"][0]["text"] for c in text_chunks) == expected_text(12)
    assert [c["choices"][0]["finish_reason"] for c in text_chunks][-1] == "length"
    assert all(c["choices"][0]["finish_reason"] is None for c in text_chunks[:-1])
    assert len({c["id"] for c in chunks}) == 1
    usage = chunks[-1]
    assert usage["choices"] == [] and usage["usage"] == {"prompt_tokens": 3, "completion_tokens": 12,
                                                         "total_tokens": 15}


def test_completion_logprobs(make_app):
    app, _ = make_app()
    r = _post(app, "/v1/completions", {"prompt": "x", "max_tokens": 4, "logprobs": 3})
    lp = r.json()["choices"][0]["logprobs"]
    assert lp["tokens"] == list(REPLY[:4])
    assert lp["token_logprobs"] == [-0.25] * 4
    assert lp["text_offset"] == [0, 1, 2, 3]
    assert all(len(t) == 3 for t in lp["top_logprobs"])
    # streamed logprobs arrive per chunk and add up to the same
    r = _post(app, "/v1/completions", {"prompt": "x", "max_tokens": 4, "logprobs": 2, "stream": True})
    chunks = [e for e in parse_sse(r.text) if e != "[DONE]"]
    toks = [t for c in chunks for t in c["choices"][0]["logprobs"]["tokens"]]
    assert toks == list(REPLY[:4])


def test_chat_non_streaming(make_app):
    app, factory = make_app()
    r = _post(app, "/v1/chat/completions", {
        "model": "fake-llama4", "max_completion_tokens": 9,
        "messages": [{"role": "system", "content": "be brief"},
                     {"role": "user", "content": [{"type": "text", "text": "hel"}, {"type": "text", "text": "lo"}]}]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    assert body["choices"][0]["message"] == {"role": "assistant", "content": expected_text(9)}
    assert body["choices"][0]["finish_reason"] == "length"
    templ = "<|system|>be brief\n<|user|>hello\n<|assistant|>"
    assert body["usage"]["prompt_tokens"] == 1 + len(templ)


def test_chat_streaming(make_app):
    app, _ = make_app()
    r = _post(app, "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 10,
                                            "stream": True, "logprobs": True, "top_logprobs": 2})
    assert r.status_code == 200, r.text
    events = parse_sse(r.text)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    content = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert content == expected_text(10)
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    lps = [t for c in chunks if c["choices"][0]["logprobs"] for t in c["choices"][0]["logprobs"]["content"]]
    assert [t["token"] for t in lps] == list(REPLY[:10])
    assert all(len(t["top_logprobs"]) == 2 and t["bytes"] == list(t["token"].encode()) for t in lps)
    assert "usage" not in chunks[-1]  # not asked for


def test_chat_logprobs_non_streaming(make_app):
    app, factory = make_app()
    r = _post(app, "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3,
                                            "logprobs": True})
    body = r.json()
    content = body["choices"][0]["logprobs"]["content"]
    assert [c["token"] for c in content] == list(REPLY[:3])
    assert all(c["top_logprobs"] == [] for c in content)
    assert factory.engine.params[body["id"]].logprobs == 0


def test_health_and_metrics(make_app):
    app, factory = make_app()
    assert _get(app, "/health").json() == {"status": "ok", "detail": None}
    for _ in range(3):
        assert _post(app, "/v1/completions", {"prompt": "abc", "max_tokens": 5, "stream": True}).status_code == 200
    assert _post(app, "/v1/completions", {"prompt": "abc", "max_tokens": -1}).status_code == 400
    r = _get(app, "/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text

    def value(name: str) -> float:
        m = re.search(rf"^{re.escape(name)} ([0-9.e+-]+)$", text, re.M)
        assert m, f"{name} missing from /metrics"
        return float(m.group(1))

    assert value('amd_llama4_http_requests_total{path="/v1/completions",status="200"}') == 3
    assert value('amd_llama4_http_requests_total{path="/v1/completions",status="400"}') == 1
    assert value("amd_llama4_prompt_tokens_total") == 3 * 4
    assert value("amd_llama4_generation_tokens_total") == 3 * 5
    assert value("amd_llama4_time_to_first_token_seconds_count") == 3
    assert value("amd_llama4_inter_token_latency_seconds_count") == 3 * 4
    assert value("amd_llama4_requests_in_flight") == 0
    assert value("amd_llama4_kv_cache_blocks_total") == 1024
    assert value("amd_llama4_kv_cache_usage_ratio") == 0
    assert value('amd_llama4_request_finished_total{reason="length"}') == 3
    # the same 4-token prompt 3 times, block size 4: the 2 repeats hit their one full block
    assert value("amd_llama4_prefix_cache_queries_total") == 3 * 4
    assert value("amd_llama4_prefix_cache_hits_total") == 2 * 4
    assert _get(app, "/metrics").status_code == 200  # a second scrape adds nothing new
    assert re.search(r"^amd_llama4_prefix_cache_hits_total 8.0$", _get(app, "/metrics").text, re.M)


def test_not_found_and_method_not_allowed_are_openai_errors(make_app):
    app, _ = make_app()
    r = _get(app, "/v1/nope")
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error"
    r = _get(app, "/v1/completions")
    assert r.status_code == 405 and set(r.json()["error"]) == {"message", "type", "param", "code"}
    assert "POST" in r.headers.get("allow", "")


def test_apps_have_separate_metrics(make_app):
    a, _ = make_app()
    b, _ = make_app()
    assert _post(a, "/v1/completions", {"prompt": "x", "max_tokens": 1}).status_code == 200
    assert 'status="200"' not in _get(b, "/metrics").text


def test_engine_whose_generate_is_a_coroutine(make_app):
    """`async def generate(...)` returning the iterator works like an async generator."""
    from amd_llama4.serve.app import build_app
    from fake_engine import FakeEngine

    class CoroEngine(FakeEngine):
        async def generate(self, prompt, params, request_id):
            return super().generate(prompt, params, request_id)

    app = build_app(CoroEngine)
    r = _post(app, "/v1/completions", {"prompt": "x", "max_tokens": 4, "stream": True})
    assert "".join(e["choices"][0]["text"] for e in parse_sse(r.text)[:-1]) == expected_text(4)
