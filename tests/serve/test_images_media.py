"""multimodal/media.py: image URLs -> RGB PIL images, and every refusal (no network: remote fetches
go to a local HTTP server on 127.0.0.1)."""
from __future__ import annotations

import base64
import http.server
import io
import struct
import threading
import time
import zlib

import pytest

from amd_llama4.multimodal.media import (MediaError, MediaLimits, decode_image, load_image,
                                         parse_limit_mm_per_prompt)

Image = pytest.importorskip("PIL.Image")


def encode(img, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def gradient(w: int = 23, h: int = 7, mode: str = "RGB"):
    img = Image.new("RGB", (w, h))
    img.putdata([((x * 11) % 256, (y * 37) % 256, (x * y) % 256) for y in range(h) for x in range(w)])
    return img.convert(mode)


def bomb_png(w: int, h: int) -> bytes:
    """A valid PNG header declaring w x h pixels and (almost) no data: a decompression bomb's header."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b""))


LIMITS = MediaLimits()


@pytest.mark.parametrize("fmt,mime,kw", [("PNG", "image/png", {}), ("JPEG", "image/jpeg", {"quality": 95}),
                                         ("WEBP", "image/webp", {"lossless": True}), ("GIF", "image/gif", {})])
def test_data_urls_decode_to_rgb(fmt, mime, kw):
    src = gradient()
    img = load_image(data_url(encode(src, fmt, **kw), mime), LIMITS)
    assert img.mode == "RGB" and img.size == src.size
    if fmt in ("PNG", "WEBP"):  # lossless: exact pixels
        assert list(img.getdata()) == list(src.getdata())


def test_gif_first_frame_and_alpha_palette_converted():
    a, b = Image.new("RGB", (5, 3), (255, 0, 0)), Image.new("RGB", (5, 3), (0, 0, 255))
    buf = io.BytesIO()
    a.save(buf, format="GIF", save_all=True, append_images=[b])
    img = load_image(data_url(buf.getvalue(), "image/gif"), LIMITS)
    assert img.mode == "RGB" and img.getpixel((0, 0)) == (255, 0, 0)
    for mode in ("RGBA", "LA", "P", "L"):
        out = load_image(data_url(encode(gradient(mode=mode), "PNG")), LIMITS)
        assert out.mode == "RGB" and out.size == (23, 7)


def test_extreme_sizes_accepted():
    for w, h in ((1, 1), (1, 1000), (1000, 1)):
        assert load_image(data_url(encode(gradient(w, h), "PNG")), LIMITS).size == (w, h)


@pytest.mark.parametrize("url,needle", [
    ("file:///etc/passwd", "scheme 'file' is not allowed"),
    ("ftp://example.com/a.png", "scheme 'ftp' is not allowed"),
    ("/etc/passwd", "is not allowed"),
    ("", "non-empty"),
    ("http://example.com/cat.png", "host 'example.com' are not allowed"),
    ("https://127.0.0.1/cat.png", "host '127.0.0.1' are not allowed"),
    ("data:image/png,rawbytes", "only base64"),
    ("data:image/png;base64", "needs a ','"),
    ("data:image/png;base64,@@@notbase64", "not valid base64"),
    ("data:text/plain;base64," + base64.b64encode(b"hello, I am a text file\n").decode(), "not an image"),
])
def test_refused_urls(url, needle):
    with pytest.raises(MediaError, match=needle.replace("(", r"\(")):
        load_image(url, LIMITS)


def test_corrupt_and_truncated_images():
    png = encode(gradient(64, 64), "PNG")
    with pytest.raises(MediaError, match="corrupt or truncated"):
        decode_image(png[: len(png) // 2], LIMITS)
    jpeg = encode(gradient(64, 64), "JPEG")
    with pytest.raises(MediaError, match="corrupt or truncated|not an image"):
        decode_image(jpeg[:40], LIMITS)
    with pytest.raises(MediaError, match="not an image"):
        decode_image(b"\x89PNG\r\n\x1a\n" + b"\x00" * 50, LIMITS)
    with pytest.raises(MediaError, match="not an image"):
        decode_image(b"", LIMITS)


def test_decompression_bombs_refused():
    with pytest.raises(MediaError, match="decompression bomb.*10000000000 pixels"):  # Pillow's own guard
        load_image(data_url(bomb_png(100_000, 100_000)), LIMITS)
    with pytest.raises(MediaError, match="4000x4000 = 16000000 pixels; .* at most 1000000"):
        load_image(data_url(bomb_png(4000, 4000)), MediaLimits(max_image_pixels=1_000_000))
    ok = encode(gradient(100, 100), "PNG")  # exactly at the limit is fine
    assert decode_image(ok, MediaLimits(max_image_pixels=100 * 100)).size == (100, 100)


def test_encoded_size_limit():
    png = encode(gradient(64, 64), "PNG")
    with pytest.raises(MediaError, match="larger than 100 bytes"):
        load_image(data_url(png), MediaLimits(max_image_bytes=100))


def test_options_parsing():
    assert parse_limit_mm_per_prompt(None) == 8
    assert parse_limit_mm_per_prompt("image=3") == 3
    assert parse_limit_mm_per_prompt('{"image": 0}') == 0
    assert parse_limit_mm_per_prompt({"image": 2}) == 2
    for bad in ("video=1", "image=x", "3", "image=-1"):
        with pytest.raises(ValueError, match="--limit-mm-per-prompt"):
            parse_limit_mm_per_prompt(bad)
    m = MediaLimits.from_options("image=2", "Img.Example.com, cdn.example.org", "4096")
    assert (m.limit_images, m.max_image_pixels) == (2, 4096)
    assert m.allowed_media_domains == ("img.example.com", "cdn.example.org")
    assert MediaLimits.from_options(allowed_media_domains=["a.com"]).allowed_media_domains == ("a.com",)


# ---- remote fetches, against a local server -------------------------------------------------------

class _Handler(http.server.BaseHTTPRequestHandler):
    routes: dict = {}

    def do_GET(self):  # noqa: N802 - http.server's name
        kind, payload = self.routes.get(self.path, ("status", 404))
        if kind == "status":
            self.send_response(payload)
            self.end_headers()
        elif kind == "redirect":
            self.send_response(302)
            self.send_header("Location", payload)
            self.end_headers()
        elif kind == "slow":  # drips bytes, each read well inside the socket timeout
            self.send_response(200)
            self.end_headers()
            for _ in range(40):
                self.wfile.write(b"x" * 10)
                self.wfile.flush()
                time.sleep(0.05)
        else:
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            if kind != "no_length":
                self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

    def log_message(self, *a):
        pass


@pytest.fixture(scope="module")
def local_http():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}", _Handler.routes
    srv.shutdown()
    srv.server_close()


def test_remote_fetch_allowed_host_and_limits(local_http):
    base, routes = local_http
    png = encode(gradient(30, 20), "PNG")
    routes.update({"/ok.png": ("bytes", png), "/stream.png": ("no_length", png), "/big.png": ("bytes", png),
                   "/missing.png": ("status", 404), "/hop": ("redirect", "/ok.png"), "/slow": ("slow", None)})
    allowed = MediaLimits(allowed_media_domains=("127.0.0.1",))
    assert load_image(base + "/ok.png", allowed).size == (30, 20)
    assert load_image(base + "/stream.png", allowed).size == (30, 20)
    with pytest.raises(MediaError, match="are not allowed"):
        load_image(base + "/ok.png", LIMITS)  # same URL, host not allowed
    small = MediaLimits(allowed_media_domains=("127.0.0.1",), max_image_bytes=100)
    with pytest.raises(MediaError, match=f"is {len(png)} bytes; the limit is 100"):
        load_image(base + "/big.png", small)  # declared Content-Length
    with pytest.raises(MediaError, match="larger than 100 bytes"):
        load_image(base + "/stream.png", small)  # no Content-Length: counted while reading
    with pytest.raises(MediaError, match="HTTP 404"):
        load_image(base + "/missing.png", allowed)
    with pytest.raises(MediaError, match="redirects are not followed"):
        load_image(base + "/hop", allowed)
    t0 = time.monotonic()
    with pytest.raises(MediaError, match="took longer than 0.5 s"):
        load_image(base + "/slow", MediaLimits(allowed_media_domains=("127.0.0.1",), fetch_timeout_s=0.5))
    assert time.monotonic() - t0 < 1.9  # bounded by the whole-fetch deadline, not the 2 s drip
