"""Completions extras over the API: echo, echo + logprobs with max_tokens=0 (prompt scoring, equal to
transformers' log_softmax on a checkpoint it saved), vLLM's prompt_logprobs, a batch of prompts (JSON
and SSE), /tokenize and /detokenize. Fake-engine tests check the shapes; real-engine ones the numbers."""
from __future__ import annotations

import shutil

import pytest
import torch
from serve_utils import asgi_client, need, parse_sse, real_engine_server, run

from fake_engine import expected_text

from tests.engine.test_prompt_logprobs import CFG as PLP_CFG

httpx = need("httpx")

CMPL = "/v1/completions"


def _post(app, path, body):
    async def go():
        async with asgi_client(app) as c:
            return await c.post(path, json=body)

    r = run(go())
    assert r.status_code == 200, r.text
    return r


# ---- fake engine: shapes -----------------------------------------------------------------------

def test_batch_of_prompts_prompt_major_with_usage_summed(make_app):
    app, factory = make_app()
    prompts = ["ab", "cde", "f"]
    out = _post(app, CMPL, {"prompt": prompts, "n": 2, "max_tokens": 5}).json()
    assert [c["index"] for c in out["choices"]] == list(range(6))
    assert [c["text"] for c in out["choices"]] == [expected_text(5), expected_text(6)[1:]] * 3
    assert out["usage"]["prompt_tokens"] == 3 + 4 + 2  # BOS + bytes
    assert out["usage"]["completion_tokens"] == 6 * 5
    assert len(factory.engine.started) == 3 and factory.engine.kv_blocks_used == 0


def test_batch_of_prompts_streamed(make_app):
    app, factory = make_app()
    r = _post(app, CMPL, {"prompt": [[5], [6, 7], [8]], "max_tokens": 4, "stream": True,
                          "stream_options": {"include_usage": True}})
    events = parse_sse(r.text)
    assert events[-1] == "[DONE]" and events.count("[DONE]") == 1
    texts: dict[int, str] = {}
    for e in events[:-2]:
        for c in e["choices"]:
            texts[c["index"]] = texts.get(c["index"], "") + c["text"]
    assert texts == {i: expected_text(4) for i in range(3)}
    assert events[-2]["choices"] == [] and events[-2]["usage"]["prompt_tokens"] == 4
    assert factory.engine.kv_blocks_used == 0


@pytest.mark.parametrize("stream", [False, True])
def test_echo_prepends_the_prompt(make_app, stream):
    app, _ = make_app()
    r = _post(app, CMPL, {"prompt": [[3 + ord("h"), 3 + ord("i")], [3 + ord("x")]], "max_tokens": 3, "echo": True,
                          "stream": stream})
    if stream:
        texts: dict[int, str] = {}
        for e in parse_sse(r.text)[:-1]:
            c = e["choices"][0]
            texts[c["index"]] = texts.get(c["index"], "") + c["text"]
        got = [texts[0], texts[1]]
    else:
        got = [c["text"] for c in r.json()["choices"]]
    assert got == ["hi" + expected_text(3), "x" + expected_text(3)]
    one = _post(app, CMPL, {"prompt": "hé ", "max_tokens": 2, "echo": True}).json()["choices"][0]["text"]
    assert one == "hé " + expected_text(2)


def test_echo_logprobs_max_tokens_zero_scores_the_prompt(make_app):
    app, _ = make_app()
    out = _post(app, CMPL, {"prompt": "abcdefg", "max_tokens": 0, "echo": True, "logprobs": 2}).json()
    (c,) = out["choices"]
    assert c["text"] == "abcdefg" and c["finish_reason"] == "length"
    lp = c["logprobs"]
    assert len(lp["tokens"]) == 8  # BOS + 7 bytes
    assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
    assert lp["token_logprobs"][1:] == pytest.approx([-0.5 - 0.01 * i for i in range(1, 8)])
    assert all(len(t) == 2 for t in lp["top_logprobs"][1:])
    assert out["usage"] == {"prompt_tokens": 8, "completion_tokens": 0, "total_tokens": 8}


def test_echo_logprobs_then_generated_logprobs(make_app):
    app, _ = make_app()
    (c,) = _post(app, CMPL, {"prompt": [5, 6, 7], "max_tokens": 2, "echo": True, "logprobs": 0}).json()["choices"]
    lp = c["logprobs"]
    assert len(lp["tokens"]) == 3 + 2 and lp["token_logprobs"][0] is None
    assert lp["token_logprobs"][3:] == [-0.25, -0.25]  # the fake's generated logprobs
    assert lp["text_offset"] == sorted(lp["text_offset"])


def test_vllm_prompt_logprobs_completion_and_chat(make_app):
    app, _ = make_app()
    (c,) = _post(app, CMPL, {"prompt": [5, 6, 7], "max_tokens": 1, "prompt_logprobs": 1}).json()["choices"]
    plp = c["prompt_logprobs"]
    assert plp[0] is None and len(plp) == 3
    assert plp[1]["6"]["logprob"] == pytest.approx(-0.51) and plp[1]["6"]["rank"] is None
    assert plp[1][str(3 + ord("a"))] == {"logprob": pytest.approx(-0.1), "rank": 1, "decoded_token": "a"}
    chat = _post(app, "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1,
                                               "prompt_logprobs": 0}).json()
    assert chat["prompt_logprobs"][0] is None and len(chat["prompt_logprobs"]) == chat["usage"]["prompt_tokens"]
    assert all(len(e) == 1 for e in chat["prompt_logprobs"][1:])


def test_tokenize_detokenize_fake(make_app):
    app, _ = make_app()
    t = _post(app, "/tokenize", {"prompt": "héllo"}).json()
    assert t == {"count": 7, "max_model_len": 256, "tokens": [1] + [b + 3 for b in "héllo".encode()]}
    assert _post(app, "/tokenize", {"prompt": "a", "add_special_tokens": False}).json()["tokens"] == [3 + 97]
    chat = _post(app, "/tokenize", {"messages": [{"role": "developer", "content": "x"}]}).json()
    assert chat["count"] == len(chat["tokens"]) > 3
    assert _post(app, "/detokenize", {"tokens": t["tokens"]}).json() == {"prompt": "héllo"}


# ---- real engine on a checkpoint saved by transformers: numbers ----------------------------------

# the prompt-logprobs engine test's model, with the tiny tokenizer's 512 ids
CFG = dict(PLP_CFG, vocab_size=512)


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    from amd_llama4 import Llama4Config
    from amd_llama4.engine.tokenizer import tiny_tokenizer_dir
    from tests.hf_reference import save_hf

    folder = tmp_path_factory.mktemp("extras")
    hf = save_hf(Llama4Config(**CFG), folder, seed=3).float().eval()
    for name in ("tokenizer.json", "tokenizer_config.json"):  # the tiny tokenizer's 512 ids fit the vocab
        shutil.copy(tiny_tokenizer_dir() / name, folder / name)
    with real_engine_server(16, model=str(folder), dtype="float32", block_size=4, num_kv_blocks=128,
                            max_model_len=256) as srv:
        yield srv, hf


def _hf_logprobs(hf, ids):
    with torch.no_grad():
        return torch.log_softmax(hf(torch.tensor([ids])).logits[0].float(), dim=-1)  # [L, V]


def test_echo_logprobs_equal_transformers(real):
    srv, hf = real
    text = "The quick brown fox"
    ids = [httpx.post(srv.url + "/tokenize", json={"prompt": text}).json()["tokens"], [1, 70, 300, 5, 411, 9, 12]]
    r = httpx.post(srv.url + CMPL, timeout=120, json={"prompt": ids, "max_tokens": 0, "echo": True,
                                                     "logprobs": 3, "prompt_logprobs": 2})
    assert r.status_code == 200, r.text
    choices = r.json()["choices"]
    text_choice = httpx.post(srv.url + CMPL, timeout=120, json={"prompt": text, "max_tokens": 0, "echo": True,
                                                               "logprobs": 3}).json()["choices"][0]
    # the same prompt alone and in a batch of two: same tokens, logprobs equal up to the batch's
    # float reduction order (the torch backend's matmuls differ in the last bits between shapes)
    one, batched = text_choice["logprobs"], choices[0]["logprobs"]
    assert text_choice["text"] == text and one["tokens"] == batched["tokens"]
    assert one["text_offset"] == batched["text_offset"]
    assert one["token_logprobs"][0] is None and batched["token_logprobs"][0] is None
    torch.testing.assert_close(torch.tensor(one["token_logprobs"][1:]), torch.tensor(batched["token_logprobs"][1:]),
                               atol=1e-5, rtol=0)
    for a, b in zip(one["top_logprobs"][1:], batched["top_logprobs"][1:]):
        assert sorted(a.values()) == pytest.approx(sorted(b.values()), abs=1e-5)
    for c, p_ids in zip(choices, ids):
        ref = _hf_logprobs(hf, p_ids)
        lp = c["logprobs"]
        assert len(lp["token_logprobs"]) == len(p_ids) and lp["token_logprobs"][0] is None
        want = ref[torch.arange(len(p_ids) - 1), torch.tensor(p_ids[1:])]
        torch.testing.assert_close(torch.tensor(lp["token_logprobs"][1:], dtype=torch.float64), want.double(),
                                   atol=1e-4, rtol=0)
        # keyed by text: ids that decode alike (byte pieces) share a key, so compare per value
        ref_top = ref[:-1].topk(3).values.double()  # [L-1, 3]
        for pos, t in enumerate(lp["top_logprobs"][1:]):
            assert 1 <= len(t) <= 3
            assert max(t.values()) == pytest.approx(float(ref_top[pos, 0]), abs=1e-4)
            assert all((ref_top[pos] - v).abs().min() < 1e-4 for v in t.values())
        plp = c["prompt_logprobs"]
        assert plp[0] is None and all(e[str(t)]["logprob"] == pytest.approx(float(w), abs=1e-4)
                                      for e, t, w in zip(plp[1:], p_ids[1:], want))
        assert c["finish_reason"] == "length"


def test_batch_of_three_prompts_real(real):
    srv, _ = real
    prompts = ["Hello", "a b c", "x"]
    body = {"prompt": prompts, "max_tokens": 4, "temperature": 0, "ignore_eos": True}
    batch = httpx.post(srv.url + CMPL, timeout=120, json=body).json()
    assert [c["index"] for c in batch["choices"]] == [0, 1, 2]
    single = [httpx.post(srv.url + CMPL, timeout=120, json=dict(body, prompt=p)).json() for p in prompts]
    assert [c["text"] for c in batch["choices"]] == [s["choices"][0]["text"] for s in single]
    assert batch["usage"]["prompt_tokens"] == sum(s["usage"]["prompt_tokens"] for s in single)
    streamed = httpx.post(srv.url + CMPL, timeout=120, json=dict(body, stream=True))
    texts: dict[int, str] = {}
    for e in parse_sse(streamed.text)[:-1]:
        for c in e["choices"]:
            texts[c["index"]] = texts.get(c["index"], "") + c["text"]
    assert [texts[i] for i in range(3)] == [c["text"] for c in batch["choices"]]


def test_tokenize_detokenize_round_trip_real(real):
    srv, _ = real
    text = "Hello world, héllo!"
    t = httpx.post(srv.url + "/tokenize", json={"prompt": text, "add_special_tokens": False}).json()
    assert t["count"] == len(t["tokens"]) and t["max_model_len"] == 256
    assert httpx.post(srv.url + "/detokenize", json={"tokens": t["tokens"]}).json() == {"prompt": text}
    with_bos = httpx.post(srv.url + "/tokenize", json={"prompt": text}).json()["tokens"]
    assert with_bos == [1] + t["tokens"]
    chat = httpx.post(srv.url + "/tokenize", json={"messages": [{"role": "user", "content": "hi"}]}).json()
    assert chat["tokens"][0] == 1 and chat["count"] > 3
