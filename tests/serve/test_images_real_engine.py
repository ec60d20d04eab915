"""A chat with an image through the OpenAI server over the REAL engine (tiny-scout, CPU): 200 with
text, greedy tokens equal to LLM.chat with the same image, usage counting the image's tokens."""
from __future__ import annotations

import pytest
from serve_utils import need, real_engine_server, run, stream_events, wait_until

from test_images_media import data_url, encode, gradient

httpx = need("httpx")


@pytest.fixture(scope="module")
def server():
    with real_engine_server(16, model="tiny-scout", max_num_seqs=8, max_model_len=512) as srv:
        yield srv


def test_chat_with_image_equals_llm_chat(server):
    from amd_llama4 import SamplingParams
    from amd_llama4.engine.llm import LLM

    img = gradient(90, 50)
    prompt = "What is in this picture?"
    body = {"model": "tiny-scout", "max_tokens": 8, "temperature": 0, "logprobs": True,
            "messages": [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": data_url(encode(img, "PNG"))}},
                {"type": "text", "text": prompt}]}]}
    r = httpx.post(server.url + "/v1/chat/completions", json=body, timeout=120)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["choices"][0]["message"]["content"]
    llm = LLM("tiny-scout", device="cpu", max_model_len=512)
    ref = llm.chat([{"role": "user", "content": [{"type": "image", "image": img},
                                                 {"type": "text", "text": prompt}]}],
                   SamplingParams(temperature=0, max_tokens=8))[0]
    assert out["choices"][0]["message"]["content"] == ref.outputs[0].text
    assert out["usage"]["prompt_tokens"] == len(ref.prompt_token_ids)  # the image's tokens counted
    text_only = httpx.post(server.url + "/v1/chat/completions", timeout=120, json={
        **body, "messages": [{"role": "user", "content": prompt}]}).json()
    assert out["usage"]["prompt_tokens"] > text_only["usage"]["prompt_tokens"] + 4  # >= one tile of tokens
    bad = httpx.post(server.url + "/v1/chat/completions", timeout=60, json={
        **body, "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,aGVsbG8="}}]}]})
    assert bad.status_code == 400 and "not an image" in bad.json()["error"]["message"]
    assert httpx.post(server.url + "/v1/chat/completions", json=body, timeout=120).json()["choices"][0][
        "message"]["content"] == ref.outputs[0].text  # healthy after the bad one


def test_serve_random_multimodal_checkpoint_equals_transformers(tmp_path):
    """The acceptance path: a random multimodal checkpoint saved by transformers with its own
    tokenizer, chat template and preprocessor_config.json, served, queried with an image part;
    greedy tokens equal transformers' reference loop over the same expanded prompt and pixels."""
    from amd_llama4.engine.tokenizer import Tokenizer
    from tests.engine import mm_engine_helpers as h

    folder = tmp_path / "mm"
    folder.mkdir()
    hf = h.save_checkpoint(folder, seed=5)
    img = h.make_image(112, 112, seed=2)  # a 2x2 tile grid plus the thumbnail
    messages = [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": data_url(encode(img, "PNG"))}},
        {"type": "text", "text": "Describe it."}]}]
    with real_engine_server(4, model=str(folder), max_num_seqs=4, max_model_len=512, num_kv_blocks=64) as srv:
        r = httpx.post(srv.url + "/v1/chat/completions", timeout=120, json={
            "model": str(folder), "messages": messages, "max_tokens": 6, "temperature": 0,
            "ignore_eos": True, "logprobs": True})
    assert r.status_code == 200, r.text
    out = r.json()
    tok = Tokenizer.from_pretrained(str(folder))
    ids, pixels = h.reference_prompt(tok, folder, tok.apply_chat_template(messages, add_generation_prompt=True,
                                                                          tokenize=True), [img])
    want = h.greedy(hf, ids, pixels, 6)
    got = [c["token"] for c in out["choices"][0]["logprobs"]["content"]]  # the sampled tokens' texts
    assert got == [tok.token_text(t) for t in want]
    assert out["usage"]["prompt_tokens"] == len(ids)


def test_load_with_image_parts_all_complete_and_free_kv(server):
    """Load test with content parts: 16 concurrent streamed chats, each with an image (4 distinct, so
    the encoder cache is shared) — every stream ends with [DONE], nothing lost, KV back to idle."""
    import asyncio

    urls = [data_url(encode(gradient(40 + 30 * i, 60), "PNG")) for i in range(4)]

    async def one(client, i):
        body = {"model": "tiny-scout", "max_tokens": 8, "stream": True, "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": urls[i % 4]}}, {"type": "text", "text": f"image {i}"}]}]}
        return await stream_events(client, server.url + "/v1/chat/completions", body)

    async def main():
        async with httpx.AsyncClient(timeout=120) as client:
            return await asyncio.gather(*(one(client, i) for i in range(16)))

    results = run(main(), timeout=240)
    assert len(results) == 16 and all(r for r in results)
    finals = [next(c for c in reversed(r) if c["choices"])["choices"][0]["finish_reason"] for r in results]
    assert all(f in ("length", "stop") for f in finals)
    wait_until(lambda: server.engines[-1].stats()["kv_blocks_used"] == 0, timeout=10, what="KV freed")
