"""A chat with an image through the OpenAI server over the REAL engine (tiny-scout, CPU): 200 with
text, greedy tokens equal to LLM.chat with the same image, usage counting the image's tokens."""
from __future__ import annotations

import inspect

import pytest
from serve_utils import LiveServer, need

from test_images_media import data_url, encode, gradient

httpx = need("httpx")


@pytest.fixture(scope="module")
def server():
    from amd_llama4.engine.async_engine import AsyncEngine
    from amd_llama4.serve.app import build_app

    if "multi_modal_data" not in inspect.signature(AsyncEngine.generate).parameters:
        pytest.skip("AsyncEngine.generate has no multi_modal_data yet (engine/async_engine.py change pending)")
    engines = []

    def factory():
        engines.append(AsyncEngine.from_config(model="tiny-scout", max_num_seqs=8, max_model_len=512))
        return engines[-1]

    with LiveServer(build_app(factory, max_queue=16)) as srv:
        yield srv
    for e in engines:
        e.shutdown()


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
