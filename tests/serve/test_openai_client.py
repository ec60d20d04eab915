"""The official `openai` client against a real uvicorn server on 127.0.0.1 over the fake engine."""
from __future__ import annotations

import asyncio

import pytest
from serve_utils import Factory, LiveServer, need, run

from fake_engine import expected_text

openai = need("openai")
httpx = need("httpx")

KEY = "test-key-123"


@pytest.fixture(scope="module")
def server():
    from amd_llama4.serve.app import build_app

    factory = Factory(step_delay_s=0.002)
    with LiveServer(build_app(factory, api_key=KEY, max_queue=64)) as srv:
        srv.factory = factory
        yield srv


def _client(srv, key=KEY):
    return openai.OpenAI(base_url=srv.url + "/v1", api_key=key, max_retries=0, timeout=30)


def test_models_list(server):
    models = _client(server).models.list()
    assert [m.id for m in models.data] == ["fake-llama4"]


def test_completion(server):
    r = _client(server).completions.create(model="fake-llama4", prompt="Say hi", max_tokens=8, temperature=0)
    assert r.choices[0].text == expected_text(8)
    assert r.choices[0].finish_reason == "length"
    assert r.usage.prompt_tokens == 7 and r.usage.completion_tokens == 8


def test_completion_stream(server):
    stream = _client(server).completions.create(model="fake-llama4", prompt="x", max_tokens=6, stream=True)
    chunks = list(stream)
    assert "".join(c.choices[0].text for c in chunks) == expected_text(6)
    assert chunks[-1].choices[0].finish_reason == "length"


def test_chat(server):
    r = _client(server).chat.completions.create(
        model="fake-llama4", messages=[{"role": "user", "content": "hello"}], max_completion_tokens=5,
        logprobs=True, top_logprobs=2)
    msg = r.choices[0].message
    assert msg.role == "assistant" and msg.content == expected_text(5)
    assert len(r.choices[0].logprobs.content) == 5
    assert len(r.choices[0].logprobs.content[0].top_logprobs) == 2


def test_chat_stream_with_usage(server):
    stream = _client(server).chat.completions.create(
        model="fake-llama4", messages=[{"role": "user", "content": "hello"}], max_tokens=7, stream=True,
        stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == expected_text(7)
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage.completion_tokens == 7 and chunks[-1].choices == []


@pytest.mark.parametrize("route", ["chat", "completions"])
def test_continuous_usage_stats(server, route):
    """vLLM's stream_options.continuous_usage_stats (guidellm always sends it): every chunk carries
    the usage so far, never decreasing, the last one the final count."""
    opts = {"include_usage": True, "continuous_usage_stats": True}
    if route == "chat":
        stream = _client(server).chat.completions.create(
            model="fake-llama4", messages=[{"role": "user", "content": "hello"}], max_tokens=6, stream=True,
            stream_options=opts)
    else:
        stream = _client(server).completions.create(model="fake-llama4", prompt="x", max_tokens=6, stream=True,
                                                    stream_options=opts)
    chunks = list(stream)
    counts = [c.usage.completion_tokens for c in chunks]
    assert all(c.usage is not None for c in chunks) and counts == sorted(counts)
    assert counts[-1] == 6 and chunks[-1].usage.total_tokens == chunks[-1].usage.prompt_tokens + 6


def test_client_errors_map_to_openai_exceptions(server):
    with pytest.raises(openai.BadRequestError) as e:
        _client(server).completions.create(model="fake-llama4", prompt="x", temperature=5)
    assert e.value.param == "temperature" and e.value.type == "invalid_request_error"
    with pytest.raises(openai.BadRequestError):
        _client(server).completions.create(model="other-model", prompt="x")
    with pytest.raises(openai.AuthenticationError):
        _client(server, key="wrong").models.list()


def test_16_concurrent_streams_all_finish(server):
    async def one_openai(client, i):
        stream = await client.chat.completions.create(
            model="fake-llama4", messages=[{"role": "user", "content": f"req {i}"}], max_tokens=20 + i, stream=True)
        text, finish = "", None
        async for c in stream:
            if c.choices:
                text += c.choices[0].delta.content or ""
                finish = c.choices[0].finish_reason or finish
        return text, finish

    async def one_raw(client, i):
        lines = []
        async with client.stream("POST", "/v1/completions", headers={"Authorization": f"Bearer {KEY}"},
                                 json={"prompt": f"p{i}", "max_tokens": 10 + i, "stream": True}) as r:
            assert r.status_code == 200
            async for line in r.aiter_lines():
                if line:
                    lines.append(line)
        return lines

    async def go():
        client = openai.AsyncOpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=60)
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as raw:
            res_openai = await asyncio.gather(*(one_openai(client, i) for i in range(16)))
            res_raw = await asyncio.gather(*(one_raw(raw, i) for i in range(16)))
        await client.close()
        return res_openai, res_raw

    res_openai, res_raw = run(go(), timeout=120)
    for i, (text, finish) in enumerate(res_openai):
        assert text == expected_text(20 + i) and finish == "length", i
    for lines in res_raw:
        assert lines[-1] == "data: [DONE]"
    engine = server.factory.engine
    assert engine.kv_blocks_used == 0 and engine.aborted == []


def _by_index(chunks, field):
    texts: dict[int, str] = {}
    for c in chunks:
        for ch in c.choices:
            texts[ch.index] = texts.get(ch.index, "") + (field(ch) or "")
    return texts


def test_n4_completion_and_chat(server):
    """n=4 (fake engine: sample i replies REPLY from byte i): 4 choices, usage counts the prompt once."""
    c = _client(server)
    r = c.completions.create(model="fake-llama4", prompt="Say hi", max_tokens=5, n=4, seed=1)
    assert [ch.index for ch in r.choices] == [0, 1, 2, 3]
    texts = [ch.text for ch in r.choices]
    assert texts == [(expected_text(9))[i:i + 5] for i in range(4)] and len(set(texts)) == 4
    assert r.usage.prompt_tokens == 7 and r.usage.completion_tokens == 4 * 5 and r.usage.total_tokens == 27
    params = server.factory.engine.params[r.id]
    assert (params.n, params.best_of, params.seed) == (4, None, 1)

    chat = c.chat.completions.create(model="fake-llama4", messages=[{"role": "user", "content": "hi"}],
                                     max_tokens=3, n=4)
    assert [ch.index for ch in chat.choices] == [0, 1, 2, 3]
    assert [ch.message.content for ch in chat.choices] == [expected_text(7)[i:i + 3] for i in range(4)]
    assert chat.usage.completion_tokens == 12


def test_n4_streams(server):
    c = _client(server)
    chunks = list(c.completions.create(model="fake-llama4", prompt="x", max_tokens=6, n=4, stream=True,
                                       stream_options={"include_usage": True}))
    assert _by_index(chunks, lambda ch: ch.text) == {i: expected_text(10)[i:i + 6] for i in range(4)}
    finishes = [(ch.index, ch.finish_reason) for k in chunks for ch in k.choices if ch.finish_reason]
    assert sorted(finishes) == [(i, "length") for i in range(4)]
    assert chunks[-1].usage.completion_tokens == 24 and chunks[-1].usage.prompt_tokens == 2

    chunks = list(c.chat.completions.create(model="fake-llama4", messages=[{"role": "user", "content": "hi"}],
                                            max_tokens=4, n=4, stream=True))
    roles = [ch.index for k in chunks for ch in k.choices if ch.delta.role == "assistant"]
    assert roles == [0, 1, 2, 3]
    assert _by_index(chunks, lambda ch: ch.delta.content) == {i: expected_text(8)[i:i + 4] for i in range(4)}


def test_best_of_returns_the_n_best(server):
    # fake sample i has logprob -0.25 * (i + 1) per token: the best two are samples 0 and 1
    r = _client(server).completions.create(model="fake-llama4", prompt="x", max_tokens=4, n=2, best_of=5)
    assert [(ch.index, ch.text) for ch in r.choices] == [(0, expected_text(4)), (1, expected_text(5)[1:])]
    assert r.usage.completion_tokens == 8
    assert server.factory.engine.params[r.id].best_of == 5
    with pytest.raises(openai.BadRequestError, match="best_of"):
        _client(server).completions.create(model="fake-llama4", prompt="x", max_tokens=4, n=2, best_of=5,
                                           stream=True)
