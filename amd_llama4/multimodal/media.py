"""Images from URLs, as the OpenAI API sends them: `data:` URLs (base64), and remote `http(s)` URLs
only for hosts the operator allowed (`--allowed-media-domains`), with size and time limits.
`file:` and every other scheme are refused: a server must never read its own disk for a client.

Every refusal raises MediaError (a ValueError) whose message names the problem, so the server can
answer 400 with it. Pillow decodes; its decompression-bomb guard is applied per call with our own
pixel limit (Image.MAX_IMAGE_PIXELS is a process global, so it is not touched)."""
from __future__ import annotations

import base64
import binascii
import io
import json
import time
import urllib.error
import urllib.parse
import urllib.request
import warnings
from dataclasses import dataclass, field

DEFAULT_LIMIT_IMAGES = 8  # images per prompt (vLLM's --limit-mm-per-prompt); Meta tested up to 8
DEFAULT_MAX_IMAGE_PIXELS = 64 * 1024 * 1024  # decoded width x height; 8192 x 8192
DEFAULT_MAX_IMAGE_BYTES = 20 * 1024 * 1024  # encoded bytes of one image (data: or fetched)
DEFAULT_FETCH_TIMEOUT_S = 10.0
FORMATS = ("PNG", "JPEG", "WEBP", "GIF")
_CHUNK = 64 * 1024


class MediaError(ValueError):
    """A client's image could not be used; the message says why (HTTP 400)."""


@dataclass(frozen=True)
class MediaLimits:
    """What a server accepts as images. `allowed_media_domains`: exact host names that remote
    http(s) image URLs may name; empty = no remote fetches at all."""

    limit_images: int = DEFAULT_LIMIT_IMAGES
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES
    fetch_timeout_s: float = DEFAULT_FETCH_TIMEOUT_S
    allowed_media_domains: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self):
        if self.limit_images < 0:
            raise ValueError(f"--limit-mm-per-prompt image={self.limit_images}: must be >= 0")
        if self.max_image_pixels < 1 or self.max_image_bytes < 1 or self.fetch_timeout_s <= 0:
            raise ValueError("MediaLimits: max_image_pixels, max_image_bytes and fetch_timeout_s must be positive; "
                             f"got {self.max_image_pixels}, {self.max_image_bytes}, {self.fetch_timeout_s}")
        object.__setattr__(self, "allowed_media_domains",
                           tuple(d.strip().lower() for d in self.allowed_media_domains if d.strip()))

    @classmethod
    def from_options(cls, limit_mm_per_prompt: str | dict | None = None,
                     allowed_media_domains: str | list[str] | tuple[str, ...] | None = None,
                     max_image_pixels: int | str | None = None) -> "MediaLimits":
        """The server options (CLI flags, Ray Serve args: strings or typed) -> MediaLimits."""
        domains = allowed_media_domains or ()
        if isinstance(domains, str):
            domains = domains.replace(",", " ").split()
        return cls(limit_images=parse_limit_mm_per_prompt(limit_mm_per_prompt),
                   max_image_pixels=int(max_image_pixels) if max_image_pixels is not None else DEFAULT_MAX_IMAGE_PIXELS,
                   allowed_media_domains=tuple(domains))


def parse_limit_mm_per_prompt(spec: str | dict | None) -> int:
    """vLLM's `--limit-mm-per-prompt` value ('image=4', '{"image": 4}' or a dict) -> images allowed."""
    if spec is None:
        return DEFAULT_LIMIT_IMAGES
    if isinstance(spec, str):
        s = spec.strip()
        try:
            spec = json.loads(s) if s.startswith("{") else dict(kv.split("=", 1) for kv in s.split(","))
        except ValueError:
            raise ValueError(f"--limit-mm-per-prompt {s!r}: expected image=N or {{\"image\": N}}") from None
    if not isinstance(spec, dict) or set(spec) - {"image"}:
        raise ValueError(f"--limit-mm-per-prompt {spec!r}: expected image=N (only images are supported)")
    try:
        n = int(spec.get("image", DEFAULT_LIMIT_IMAGES))
    except (TypeError, ValueError):
        raise ValueError(f"--limit-mm-per-prompt {spec!r}: image=N needs an integer N") from None
    if n < 0:
        raise ValueError(f"--limit-mm-per-prompt image={n}: must be >= 0")
    return n


def load_image(url: str, limits: MediaLimits):
    """An image URL -> an RGB PIL image (GIF: its first frame). Raises MediaError."""
    if not isinstance(url, str) or not url:
        raise MediaError("image_url.url: must be a non-empty string")
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme == "data":
        data = _data_url_bytes(url, limits)
    elif scheme in ("http", "https"):
        data = _fetch(url, limits)
    else:
        shown = scheme or url[:16]
        raise MediaError(f"image_url.url: scheme {shown!r} is not allowed; send a data: URL (base64) "
                         "or an http(s) URL on an allowed media domain")
    return decode_image(data, limits)


def decode_image(data: bytes, limits: MediaLimits):
    """Encoded image bytes -> an RGB PIL image, within limits.max_image_pixels. Raises MediaError."""
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            # The header's size, before a single pixel is decoded: a tiny file may declare 100k x 100k.
            w, h = img.size
            if w * h > limits.max_image_pixels:
                raise MediaError(f"image_url: the image is {w}x{h} = {w * h} pixels; this server accepts at most "
                                 f"{limits.max_image_pixels} (--max-image-pixels)")
            if img.format not in FORMATS:
                raise MediaError(f"image_url: {img.format} images are not supported; send "
                                 f"{', '.join(FORMATS)}")
            img.seek(0)  # GIF / animated WebP: the first frame
            img.load()
    except MediaError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise MediaError(f"image_url: refused as a decompression bomb: {e}") from None
    except UnidentifiedImageError:
        raise MediaError("image_url: the data is not an image Pillow can read (PNG, JPEG, WebP, GIF)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:  # truncated / corrupt pixel data
        raise MediaError(f"image_url: the image data is corrupt or truncated ({str(e)[:200] or type(e).__name__})"
                         ) from None
    return img.convert("RGB") if img.mode != "RGB" else img  # RGBA/LA/P/L/CMYK -> RGB, as Llama 4 expects


def _data_url_bytes(url: str, limits: MediaLimits) -> bytes:
    header, sep, payload = url.partition(",")
    if not sep:
        raise MediaError("image_url.url: a data: URL needs a ',' before its payload (data:image/png;base64,...)")
    if not header.lower().endswith(";base64"):
        raise MediaError("image_url.url: only base64 data: URLs are supported (data:image/png;base64,...)")
    # base64 is 4/3 of the bytes: refuse before decoding anything too big.
    if len(payload) > limits.max_image_bytes * 4 // 3 + 4:
        raise MediaError(f"image_url: the image is larger than {limits.max_image_bytes} bytes")
    try:
        return base64.b64decode(payload.strip(), validate=True)
    except (binascii.Error, ValueError) as e:
        raise MediaError(f"image_url.url: the data: URL's payload is not valid base64 ({e})") from None


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: PLR0913 - urllib's signature
        raise MediaError(f"image_url: {req.full_url[:200]} redirects ({code}); redirects are not followed, "
                         "send the final URL")


def _fetch(url: str, limits: MediaLimits) -> bytes:
    host = (urllib.parse.urlsplit(url).hostname or "").lower()
    if not host or host not in limits.allowed_media_domains:
        raise MediaError(f"image_url: remote images from host {host[:200]!r} are not allowed; the server allows "
                         f"{list(limits.allowed_media_domains) or 'none'} (--allowed-media-domains); "
                         "send the image as a data: URL")
    opener = urllib.request.build_opener(_NoRedirect, urllib.request.ProxyHandler({}))
    deadline = time.monotonic() + limits.fetch_timeout_s
    try:
        with opener.open(urllib.request.Request(url, headers={"User-Agent": "amd-llama4"}),
                         timeout=limits.fetch_timeout_s) as resp:
            declared = resp.headers.get("Content-Length")
            if declared and declared.isdigit() and int(declared) > limits.max_image_bytes:
                raise MediaError(f"image_url: {url[:200]} is {declared} bytes; the limit is "
                                 f"{limits.max_image_bytes}")
            buf = bytearray()
            while chunk := resp.read1(_CHUNK):  # what has arrived, so the deadline is checked often
                buf += chunk
                if len(buf) > limits.max_image_bytes:
                    raise MediaError(f"image_url: {url[:200]} is larger than {limits.max_image_bytes} bytes")
                if time.monotonic() > deadline:  # the socket timeout is per read; this bounds the whole
                    raise MediaError(f"image_url: fetching {url[:200]} took longer than "
                                     f"{limits.fetch_timeout_s} s")
            return bytes(buf)
    except MediaError:
        raise
    except urllib.error.HTTPError as e:
        raise MediaError(f"image_url: fetching {url[:200]} failed: HTTP {e.code}") from None
    except (urllib.error.URLError, OSError, ValueError) as e:  # includes socket timeouts
        reason = getattr(e, "reason", None) or e
        raise MediaError(f"image_url: fetching {url[:200]} failed: {str(reason)[:200] or type(reason).__name__}"
                         ) from None
