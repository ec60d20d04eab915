"""Llama 4 image preprocessing: PIL image -> tiles of normalised pixels, as transformers'
`Llama4ImageProcessor` computes them (bit for bit, on the same CPU), without torchvision.

Per image: pick the tile grid (rows x cols, at most `max_patches` tiles) whose canvas the image fits
best without distortion, resize the image to fit that canvas keeping its aspect ratio (never
upscaling past the canvas, nor past one tile unless the image is smaller than a tile), pad right and
bottom with black, rescale and normalise in bf16, cut the canvas into tiles row by row and, when there
is more than one tile, append a global thumbnail (the whole image squeezed into one tile).

Exactness notes (why the arithmetic below looks fussy):
- The reference computes the grid choice with float32 tensors, and some of the resize-target maths
  in float32 or float64 depending on which branch produced the number; `_f32` reproduces that.
- Its resize is torchvision's: uint8 in, uint8 out; on CPUs with AVX2/AVX512 torch's native uint8
  antialiased kernel, elsewhere float32 then round. `_resize` makes the same choice.
- Rescale and normalise run in bf16 (Meta's reference does), each op rounding to bf16.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

# PIL resample codes (Image.Resampling values) the reference maps to torch interpolation modes.
_RESAMPLE = {2: "bilinear", 3: "bicubic"}


@dataclass(frozen=True)
class ImageProcessorConfig:
    """The fields of a `preprocessor_config.json` that Llama 4's processor uses (same names)."""

    tile_size: int = 336  # `size` {"height": s, "width": s}: one tile; must be square
    max_patches: int = 16  # most tiles per image, thumbnail not counted
    resize_to_max_canvas: bool = False
    resample: int = 2  # PIL code: 2 bilinear, 3 bicubic
    do_convert_rgb: bool = True
    do_rescale: bool = True
    rescale_factor: float = 1 / 255
    do_normalize: bool = True
    image_mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    image_std: tuple[float, float, float] = (0.5, 0.5, 0.5)

    def __post_init__(self):
        where = "preprocessor_config.json"
        if self.tile_size < 1 or self.max_patches < 1:
            raise ValueError(f"{where}: size ({self.tile_size}) and max_patches ({self.max_patches}) must be >= 1")
        if self.resample not in _RESAMPLE:
            raise ValueError(f"{where}: resample={self.resample} is not supported; use 2 (bilinear, Llama 4's) "
                             "or 3 (bicubic)")
        if len(self.image_mean) != 3 or len(self.image_std) != 3 or not all(self.image_std):
            raise ValueError(f"{where}: image_mean/image_std need 3 values each, std non-zero; got "
                             f"{self.image_mean} / {self.image_std}")
        if self.do_normalize and not self.do_rescale:
            raise ValueError(f"{where}: do_normalize without do_rescale is not supported (the reference "
                             "cannot normalise uint8 pixels either)")

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "preprocessor_config.json") -> "ImageProcessorConfig":
        size = d.get("size") or {"height": 336, "width": 336}
        if not isinstance(size, dict) or size.get("height") != size.get("width") or not size.get("height"):
            raise ValueError(f"{where}: size must be {{'height': s, 'width': s}} (square tiles), got {size!r}")
        if d.get("do_resize", True) is False:
            raise ValueError(f"{where}: do_resize=false is not supported: Llama 4 always resizes to a tile grid")

        def triple(key: str) -> tuple[float, float, float]:
            v = d.get(key, 0.5)
            return tuple(float(x) for x in (v if isinstance(v, (list, tuple)) else [v] * 3))

        return cls(tile_size=int(size["height"]), max_patches=int(d.get("max_patches", 16)),
                   resize_to_max_canvas=bool(d.get("resize_to_max_canvas", False)),
                   resample=int(d.get("resample", 2)), do_convert_rgb=bool(d.get("do_convert_rgb", True)),
                   do_rescale=bool(d.get("do_rescale", True)),
                   rescale_factor=float(d.get("rescale_factor", 1 / 255)),
                   do_normalize=bool(d.get("do_normalize", True)),
                   image_mean=triple("image_mean"), image_std=triple("image_std"))

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> "ImageProcessorConfig":
        path = Path(folder) / "preprocessor_config.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: a multimodal Llama 4 checkpoint needs its "
                                    "preprocessor_config.json (copy it from the released model)")
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: invalid JSON ({e})") from e
        return cls.from_dict(d, str(path))

    def to_dict(self) -> dict[str, Any]:
        """A `preprocessor_config.json` transformers' Llama4ImageProcessor reads the same way."""
        return {"image_processor_type": "Llama4ImageProcessorFast", "processor_class": "Llama4Processor",
                "size": {"height": self.tile_size, "width": self.tile_size}, "max_patches": self.max_patches,
                "resize_to_max_canvas": self.resize_to_max_canvas, "resample": self.resample,
                "do_resize": True, "do_convert_rgb": self.do_convert_rgb, "do_rescale": self.do_rescale,
                "rescale_factor": self.rescale_factor, "do_normalize": self.do_normalize,
                "image_mean": list(self.image_mean), "image_std": list(self.image_std)}


@dataclass
class ProcessedImages:
    pixel_values: torch.Tensor  # [sum of tiles, 3, S, S]: each image's tiles row by row, then its thumbnail
    aspect_ratios: list[tuple[int, int]]  # per image: (rows, cols) of its tile grid

    @property
    def tiles_per_image(self) -> list[int]:
        """Tiles of each image in pixel_values (rows x cols, + 1 thumbnail when that is > 1)."""
        return [r * c + (r * c > 1) for r, c in self.aspect_ratios]


# -- grid choice ---------------------------------------------------------------------------------

def _f32(x: float) -> np.float32:
    return np.float32(x)


def tile_grids(max_patches: int) -> list[tuple[int, int]]:
    """Every (rows, cols) with rows x cols <= max_patches, grouped by aspect ratio in the order the
    reference lists them (ratios first met at the largest tile count first): the order breaks ties."""
    by_ratio: dict[float, list[tuple[int, int]]] = {}
    for n in range(max_patches, 0, -1):
        for rows in sorted(d for d in range(1, n + 1) if n % d == 0):
            by_ratio.setdefault(rows / (n // rows), []).append((rows, n // rows))
    return [g for grids in by_ratio.values() for g in grids]


def best_grid(height: int, width: int, cfg: ImageProcessorConfig) -> tuple[int, int]:
    """(rows, cols) of the canvas an image of height x width fits best without distortion: the least
    upscaling that still upscales (the most, with resize_to_max_canvas), else the least downscaling;
    among canvases with that scale the smallest (least padding)."""
    s = cfg.tile_size
    grids = tile_grids(cfg.max_patches)
    # scale of each canvas = its limiting side's ratio, in float32 as the reference computes it.
    scales = [min(_f32(c * s) / _f32(width), _f32(r * s) / _f32(height)) for r, c in grids]
    up = [x for x in scales if x >= 1]
    if up:
        chosen = max(up) if cfg.resize_to_max_canvas else min(up)
    else:
        chosen = max(scales)
    candidates = [g for g, x in zip(grids, scales) if x == chosen]
    return min(candidates, key=lambda g: g[0] * g[1])  # min() keeps the first of equal areas


def resized_size(height: int, width: int, rows: int, cols: int, cfg: ImageProcessorConfig) -> tuple[int, int]:
    """Size the image is resized to before padding to the rows x cols canvas: the canvas, capped
    (unless resize_to_max_canvas) at max(image side, one tile), filled without distortion."""
    s = cfg.tile_size
    canvas = (rows * s, cols * s)
    if cfg.resize_to_max_canvas:
        limit = [(canvas[0], True), (canvas[1], True)]  # (value, came from the float32 canvas tensor)
    else:
        # The reference keeps the image-side int unless the canvas side is strictly smaller, in which
        # case the value is a tensor and the scale below is float32 instead of float64.
        limit = [(canvas[i], True) if canvas[i] < max(side, s) else (max(side, s), False)
                 for i, side in enumerate((height, width))]
    (th, th_f32), (tw, tw_f32) = limit

    def ratio(target: int, is_f32: bool, side: int) -> float:
        return float(_f32(target) / _f32(side)) if is_f32 else target / side

    scale_h, scale_w = ratio(th, th_f32, height), ratio(tw, tw_f32, width)
    if scale_w < scale_h if not (th_f32 or tw_f32) else _f32(scale_w) < _f32(scale_h):
        new_w = tw
        prod = float(_f32(height) * _f32(scale_w)) if tw_f32 else height * scale_w
        new_h = min(math.floor(prod), th)
    else:
        new_h = th
        prod = float(_f32(width) * _f32(scale_h)) if th_f32 else width * scale_h
        new_w = min(math.floor(prod), tw)
    return max(new_h, 1), max(new_w, 1)


# -- pixels --------------------------------------------------------------------------------------

def _native_uint8_resize(mode: str) -> bool:
    # torchvision's choice: torch's uint8 bilinear kernel only where it is vectorised (AVX2/AVX512);
    # bicubic always uint8 on CPU.
    if mode == "bicubic":
        return True
    return torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")


def _resize(img: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    """img: [3, H, W] uint8 -> [3, h, w] uint8, antialiased."""
    if tuple(img.shape[-2:]) == tuple(size):
        return img
    x = img.unsqueeze(0)
    native = _native_uint8_resize(mode)
    out = F.interpolate(x if native else x.float(), size=list(size), mode=mode, align_corners=False,
                        antialias=True)
    if not native:
        if mode == "bicubic":
            out = out.clamp_(0, 255)
        out = out.round_().to(torch.uint8)
    return out[0]


def _rescale_normalize(x: torch.Tensor, cfg: ImageProcessorConfig) -> torch.Tensor:
    """x: [..., 3, h, w] uint8 -> bf16 (rescale + normalise, each op rounding to bf16), or float32
    (rescale only), or uint8 (neither)."""
    if not cfg.do_rescale:
        return x
    if not cfg.do_normalize:
        return x * cfg.rescale_factor
    x = x.to(torch.bfloat16) * cfg.rescale_factor
    mean = torch.tensor(cfg.image_mean, dtype=torch.bfloat16).view(3, 1, 1)
    std = torch.tensor(cfg.image_std, dtype=torch.bfloat16).view(3, 1, 1)
    return (x - mean) / std


def to_rgb_tensor(image: Any) -> torch.Tensor:
    """A PIL image (transparency composited on white, as the reference does) or a uint8 [3, H, W]
    tensor -> uint8 [3, H, W]."""
    from PIL import Image

    if isinstance(image, Image.Image):
        if "A" in image.getbands() or image.info.get("transparency") is not None:
            rgba = image.convert("RGBA")
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            image = Image.alpha_composite(white, rgba)
        arr = np.array(image.convert("RGB"))  # [H, W, 3]
        return torch.from_numpy(arr).permute(2, 0, 1).contiguous()
    if isinstance(image, torch.Tensor):
        if image.dtype != torch.uint8 or image.dim() != 3 or image.shape[0] != 3:
            raise ValueError(f"image tensor: expected uint8 [3, H, W] RGB, got {image.dtype} {list(image.shape)}")
        return image.contiguous()
    raise TypeError(f"image: expected a PIL.Image.Image or a uint8 [3, H, W] tensor, got {type(image).__name__}")


class Llama4ImageProcessor:
    """`preprocess(images)` -> ProcessedImages; settings from a checkpoint's preprocessor_config.json."""

    def __init__(self, config: ImageProcessorConfig | None = None):
        self.config = config or ImageProcessorConfig()

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> "Llama4ImageProcessor":
        return cls(ImageProcessorConfig.from_pretrained(folder))

    def process_one(self, image: Any) -> tuple[torch.Tensor, tuple[int, int]]:
        """-> (tiles [n, 3, S, S], (rows, cols))."""
        cfg, s = self.config, self.config.tile_size
        img = to_rgb_tensor(image)  # [3, H, W] uint8
        h, w = img.shape[-2:]
        if h == 0 or w == 0:
            raise ValueError(f"image: empty ({h} x {w} pixels)")
        mode = _RESAMPLE[cfg.resample]
        rows, cols = best_grid(h, w, cfg)
        fitted = _resize(img, resized_size(h, w, rows, cols, cfg), mode)
        canvas = F.pad(fitted, (0, cols * s - fitted.shape[-1], 0, rows * s - fitted.shape[-2]))  # black
        x = _rescale_normalize(canvas, cfg)  # [3, rows*S, cols*S]
        tiles = x.view(3, rows, s, cols, s).permute(1, 3, 0, 2, 4).reshape(rows * cols, 3, s, s)
        if rows * cols > 1:
            thumb = _rescale_normalize(_resize(img, (s, s), mode), cfg)
            tiles = torch.cat([tiles, thumb.unsqueeze(0)])
        return tiles, (rows, cols)

    def preprocess(self, images: Any | Sequence[Any]) -> ProcessedImages:
        if not isinstance(images, (list, tuple)):
            images = [images]
        if not images:
            raise ValueError("images: empty list")
        out = [self.process_one(im) for im in images]
        return ProcessedImages(torch.cat([t for t, _ in out]), [r for _, r in out])

    __call__ = preprocess
