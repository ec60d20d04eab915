"""image_url content parts through /v1/chat/completions over a fake engine that takes images as the
real one does (engine.generate(..., multi_modal_data={"image": [PIL images]}), expanding each
`<|image|>` placeholder): images reach the engine in order, usage counts their tokens, and every bad
image is a 400 naming the problem, after which the server still answers."""
from __future__ import annotations

import base64
import io

import pytest
from serve_utils import asgi_client, parse_sse, run

from fake_engine import FakeEngine, FakeTokenizer
from test_images_media import bomb_png, data_url, encode, gradient

from amd_llama4.multimodal.media import MediaLimits

Image = pytest.importorskip("PIL.Image")
IMAGE_TOKENS = 10  # the fake's expansion of one <|image|>


class ImageTokenizer(FakeTokenizer):
    """The fake chat template with image parts rendered as one <|image|> each (as Llama 4's)."""

    def apply_chat_template(self, messages, add_generation_prompt=True, tokenize=False):
        flat = [{**m, "content": "".join("<|image|>" if p["type"] in ("image", "image_url") else p["text"]
                                         for p in m["content"])} if isinstance(m.get("content"), list) else m
                for m in messages]
        return super().apply_chat_template(flat, add_generation_prompt, tokenize)


class ImageEngine(FakeEngine):
    def __init__(self, **kw):
        super().__init__(**kw)
        self.tokenizer = ImageTokenizer()
        self.images: dict[str, list] = {}

    async def generate(self, prompt, params, request_id, multi_modal_data=None):
        images = list((multi_modal_data or {}).get("image", []))
        marker = self.tokenizer.encode("<|image|>", add_bos=False)
        ids, out, n = list(prompt), [], 0
        i = 0
        while i < len(ids):  # each placeholder -> IMAGE_TOKENS tokens, as the engine expands it
            if ids[i:i + len(marker)] == marker:
                out += [self.tokenizer.offset] * IMAGE_TOKENS
                i, n = i + len(marker), n + 1
            else:
                out.append(ids[i])
                i += 1
        if n != len(images):
            raise ValueError(f"prompt has {n} <|image|> placeholder(s) but {len(images)} image(s) were given")
        self.images[request_id] = images
        async for o in super().generate(out, params, request_id):
            yield o


@pytest.fixture
def app():
    from amd_llama4.serve.app import build_app

    engines: list[ImageEngine] = []

    def factory():
        engines.append(ImageEngine())
        return engines[-1]

    a = build_app(factory)
    # build_app(..., limit_mm_per_prompt=...) is the lead's change to app.py; until then set the state.
    a.state.serve.media = MediaLimits(limit_images=3, max_image_pixels=1_000_000)
    a.engines = engines
    return a


def _chat(app, content, **extra):
    body = {"messages": [{"role": "user", "content": content}], "max_tokens": 5, **extra}

    async def go():
        async with asgi_client(app) as c:
            return await c.post("/v1/chat/completions", json=body)

    return run(go())


def _img_part(url: str) -> dict:
    return {"type": "image_url", "image_url": {"url": url}}


PNG_URL = data_url(encode(gradient(), "PNG"))


def test_images_reach_engine_in_order_and_count_in_usage(app):
    red, blue = (data_url(encode(Image.new("RGB", (4, 3), c), "PNG")) for c in ((255, 0, 0), (0, 0, 255)))
    content = [{"type": "text", "text": "compare "}, _img_part(red), {"type": "text", "text": " and "},
               _img_part(blue)]
    r = _chat(app, content)
    assert r.status_code == 200, r.text
    engine = app.engines[-1]
    (images,) = engine.images.values()
    assert [im.getpixel((0, 0)) for im in images] == [(255, 0, 0), (0, 0, 255)]
    text_only = _chat(app, "compare  and ")  # same text, no images
    assert text_only.status_code == 200
    extra = r.json()["usage"]["prompt_tokens"] - text_only.json()["usage"]["prompt_tokens"]
    assert extra == 2 * IMAGE_TOKENS  # the engine's expansion, not the server's "<|image|>" placeholders
    assert r.json()["usage"]["total_tokens"] == r.json()["usage"]["prompt_tokens"] + 5


def test_streamed_chat_with_image_and_usage(app):
    r = _chat(app, [_img_part(PNG_URL), {"type": "text", "text": "what is it?"}], stream=True,
              stream_options={"include_usage": True})
    assert r.status_code == 200, r.text
    events = parse_sse(r.text)
    assert events[-1] == "[DONE]"
    usage = events[-2]["usage"]
    assert usage["completion_tokens"] == 5 and usage["prompt_tokens"] > IMAGE_TOKENS


def test_text_parts_only_still_a_string_for_the_template(app):
    r = _chat(app, [{"type": "text", "text": "hi"}, {"type": "text", "text": " there"}])
    assert r.status_code == 200, r.text
    assert list(app.engines[-1].images.values()) == [[]]


BAD = {
    "corrupt": (data_url(encode(gradient(64, 64), "PNG")[:300]), "corrupt or truncated"),
    "text file": ("data:text/plain;base64," + base64.b64encode(b"just some text\n").decode(), "not an image"),
    "bomb": (data_url(bomb_png(50_000, 50_000)), "pixels"),
    "too large": (data_url(bomb_png(2000, 2000)), "at most 1000000 \\(--max-image-pixels\\)"),
    "file url": ("file:///etc/passwd", "scheme 'file' is not allowed"),
    "remote host": ("http://example.com/cat.png", "host 'example.com' are not allowed"),
    "bad base64": ("data:image/png;base64,%%%", "not valid base64"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_image_is_400_and_server_stays_healthy(app, case):
    url, needle = BAD[case]
    r = _chat(app, [{"type": "text", "text": "look"}, _img_part(PNG_URL), _img_part(url)])
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == "messages" and err["code"] == "invalid_image"
    assert "image 1" in err["message"]
    import re
    assert re.search(needle, err["message"]), err["message"]
    ok = _chat(app, [_img_part(PNG_URL)])
    assert ok.status_code == 200, ok.text
    assert app.engines[-1].kv_blocks_used == 0 and len(app.engines) == 1  # nothing leaked, engine kept


def test_more_images_than_the_limit_is_400(app):
    r = _chat(app, [_img_part(PNG_URL)] * 4)
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["param"] == "messages" and err["code"] == "too_many_images"
    assert "4 images" in err["message"] and "at most 3" in err["message"] and "--limit-mm-per-prompt" in err["message"]
    assert _chat(app, [_img_part(PNG_URL)] * 3).status_code == 200  # exactly the limit
    assert app.engines[-1].started  # the 4-image request never reached the engine
    assert len(app.engines[-1].started) == 1


def test_image_part_shapes_refused(app):
    r = _chat(app, [{"type": "image_url"}])  # no image_url object
    assert r.status_code == 400 and "not supported" in r.json()["error"]["message"]
    r = _chat(app, [{"type": "image_url", "image_url": {"url": 5}}])
    assert r.status_code == 400 and r.json()["error"]["param"].startswith("messages.0.content")
    r = _chat(app, [{"type": "input_audio", "input_audio": {"data": "", "format": "wav"}}])
    assert r.status_code == 400 and "input_audio" in r.json()["error"]["message"]


def test_engine_refusal_is_400(app):
    """The engine validates the placeholders (e.g. a model without a vision tower): its ValueError is a 400."""
    r = _chat(app, "a literal <|image|> with no image")
    assert r.status_code == 400 and "placeholder" in r.json()["error"]["message"]


def test_default_limit_is_8():
    from amd_llama4.serve.handlers_common import State
    from amd_llama4.serve.metrics import ServeMetrics

    state = State(None, ServeMetrics(), max_queue=1, request_timeout_s=1.0, served_model_name=None)
    assert state.media.limit_images == 8 and state.media.allowed_media_domains == ()
