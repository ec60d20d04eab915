"""The OpenAI server over the REAL engine (tiny-scout on CPU), through the official client and raw SSE."""
from __future__ import annotations

import asyncio

import pytest
from serve_utils import need, real_engine_server, run, stream_events, wait_until

openai = need("openai")
httpx = need("httpx")


@pytest.fixture(scope="module")
def server():
    with real_engine_server(128, model="tiny-scout", max_num_seqs=32, max_model_len=512) as srv:
        yield srv


def _client(srv):
    return openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0, timeout=60)


def test_models_completion_and_chat(server):
    c = _client(server)
    assert [m.id for m in c.models.list().data] == ["tiny-scout"]
    r = c.completions.create(model="tiny-scout", prompt="Hello", max_tokens=12, temperature=0)
    assert r.choices[0].finish_reason in ("length", "stop") and r.usage.completion_tokens >= 1
    again = c.completions.create(model="tiny-scout", prompt="Hello", max_tokens=12, temperature=0)
    assert again.choices[0].text == r.choices[0].text  # greedy is deterministic
    chat = c.chat.completions.create(model="tiny-scout", messages=[{"role": "user", "content": "hi"}],
                                     max_tokens=10, temperature=0)
    streamed = "".join(ch.choices[0].delta.content or "" for ch in c.chat.completions.create(
        model="tiny-scout", messages=[{"role": "user", "content": "hi"}], max_tokens=10, temperature=0,
        stream=True) if ch.choices)
    assert streamed == chat.choices[0].message.content


@pytest.mark.parametrize("clients", [16, 64])
def test_concurrent_streams_end_with_done_and_free_kv(server, clients):
    """Load test: every client gets its whole stream and [DONE]; nothing lost; KV back to idle."""
    async def one(client, i):
        body = {"model": "tiny-scout", "prompt": f"request {i}", "max_tokens": 16, "stream": True}
        return await stream_events(client, server.url + "/v1/completions", body)

    async def main():
        async with httpx.AsyncClient(timeout=60) as client:
            return await asyncio.gather(*(one(client, i) for i in range(clients)))

    results = run(main(), timeout=180)
    assert len(results) == clients and all(r for r in results)
    finished = [r[-1]["choices"][0]["finish_reason"] for r in results]
    assert all(f in ("length", "stop") for f in finished)
    wait_until(lambda: server.engines[-1].stats()["kv_blocks_used"] == 0, timeout=10, what="KV freed")


def test_disconnect_mid_stream_frees_kv_blocks(server):
    engine = server.engines[-1]
    body = {"model": "tiny-scout", "prompt": "a long story", "max_tokens": 400, "stream": True,
            "ignore_eos": True}
    with httpx.Client(timeout=30) as client:
        with client.stream("POST", server.url + "/v1/completions", json=body) as resp:
            for i, _ in enumerate(resp.iter_lines()):
                if i > 6:
                    break
            assert engine.stats()["kv_blocks_used"] > 0
    wait_until(lambda: engine.stats()["kv_blocks_used"] == 0 and engine.stats()["num_running"] == 0,
               timeout=10, what="aborted request's KV blocks freed")


def test_prompt_longer_than_max_model_len_is_400(server):
    r = httpx.post(server.url + "/v1/completions", json={"model": "tiny-scout", "prompt": [5] * 600,
                                                         "max_tokens": 4}, timeout=30)
    assert r.status_code == 400 and "maximum context length is 512" in r.json()["error"]["message"]


def test_n4_over_the_api_streamed_and_not(server):
    """n=4 on the real engine: 4 different seeded choices; the stream carries the same 4; a
    disconnect mid-stream frees every sample's blocks; /metrics has the prefix-cache counters."""
    c = _client(server)
    kw = dict(model="tiny-scout", prompt="Once upon a time", max_tokens=8, n=4, seed=7, temperature=1.0)
    r = c.completions.create(**kw, extra_body={"ignore_eos": True})
    assert [ch.index for ch in r.choices] == [0, 1, 2, 3] and len({ch.text for ch in r.choices}) > 1
    assert r.usage.completion_tokens == 32 and r.usage.prompt_tokens == len(
        server.engines[-1].tokenizer.encode("Once upon a time"))
    texts: dict[int, str] = {}
    for chunk in c.completions.create(**kw, stream=True, extra_body={"ignore_eos": True}):
        for ch in chunk.choices:
            texts[ch.index] = texts.get(ch.index, "") + ch.text
    assert texts == {ch.index: ch.text for ch in r.choices}  # same seeds, same samples
    chat = c.chat.completions.create(model="tiny-scout", messages=[{"role": "user", "content": "hi"}],
                                     max_tokens=4, n=4, temperature=0)
    assert len(chat.choices) == 4 and len({ch.message.content for ch in chat.choices}) == 1  # greedy
    engine = server.engines[-1]
    body = dict(kw, max_tokens=300, stream=True, ignore_eos=True)
    with httpx.Client(timeout=30) as client:
        with client.stream("POST", server.url + "/v1/completions", json=body) as resp:
            for i, _ in enumerate(resp.iter_lines()):
                if i > 12:
                    break
    wait_until(lambda: engine.stats()["kv_blocks_used"] == 0 and engine.stats()["num_running"] == 0,
               timeout=10, what="every sample of the aborted request freed")
    metrics = httpx.get(server.url + "/metrics", timeout=10).text
    hits = [float(line.split()[-1]) for line in metrics.splitlines()
            if line.startswith("amd_llama4_prefix_cache_hits_total")]
    assert hits and hits[0] > 0  # the repeated prompt and the 3 children hit the cache


def test_logit_bias_forces_a_token(server):
    """A +100 bias on one token id makes greedy decoding pick it at every step."""
    tok = server.engines[-1].engine.tokenizer
    r = httpx.post(server.url + "/v1/completions", timeout=60, json={
        "model": "tiny-scout", "prompt": "Hello", "max_tokens": 3, "temperature": 0, "ignore_eos": True,
        "logprobs": 0, "logit_bias": {"65": 100}})
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["logprobs"]["tokens"] == [tok.token_text(65)] * 3
