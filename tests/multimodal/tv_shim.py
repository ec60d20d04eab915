"""A stand-in `torchvision` package (only what transformers' Llama 4 image processor calls), for
running the reference processor where the real torchvision cannot be installed.

Each function follows torchvision 0.29's transforms.v2.functional (resize_image, pad_image,
normalize_image, grayscale_to_rgb_image, to_dtype_image, pil_to_tensor) for the inputs the processor
gives it: uint8/float image tensors [..., C, H, W]. test_tv_shim compares it with the real package
whenever that one is available. `write_shim(folder)` writes the package plus the dist-info that
transformers' availability check reads, and returns the folder (put it on PYTHONPATH).
"""
from __future__ import annotations

from pathlib import Path

FUNCTIONAL = '''
import enum

import numpy as np
import torch
import torch.nn.functional as F


class InterpolationMode(enum.Enum):
    NEAREST = "nearest"
    NEAREST_EXACT = "nearest-exact"
    BILINEAR = "bilinear"
    BICUBIC = "bicubic"
    BOX = "box"
    HAMMING = "hamming"
    LANCZOS = "lanczos"


def _native_uint8(mode):
    # torchvision: uint8 bilinear stays uint8 only where torch's kernel is vectorised; bicubic always.
    if mode == InterpolationMode.BILINEAR:
        return torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")
    return mode in (InterpolationMode.BICUBIC, InterpolationMode.NEAREST, InterpolationMode.NEAREST_EXACT)


def resize(image, size, interpolation=InterpolationMode.BILINEAR, max_size=None, antialias=True):
    if interpolation not in (InterpolationMode.BILINEAR, InterpolationMode.BICUBIC):
        raise NotImplementedError(f"tv_shim.resize: {interpolation} not implemented")
    shape = image.shape
    c, h, w = shape[-3:]
    nh, nw = size
    if (nh, nw) == (h, w):
        return image
    x = image.reshape(-1, c, h, w)
    dtype = image.dtype
    cast = not (dtype in (torch.float32, torch.float64) or (dtype == torch.uint8 and _native_uint8(interpolation)))
    if cast:
        x = x.float()
    x = F.interpolate(x, size=[nh, nw], mode=interpolation.value, align_corners=False, antialias=antialias)
    if cast:
        if interpolation == InterpolationMode.BICUBIC and dtype == torch.uint8:
            x = x.clamp_(0, 255)
        if not dtype.is_floating_point:
            x = x.round_()
        x = x.to(dtype)
    return x.reshape(shape[:-3] + (c, nh, nw))


def pad(image, padding, fill=0, padding_mode="constant"):
    if padding_mode != "constant":
        raise NotImplementedError("tv_shim.pad: constant padding only")
    left, top, right, bottom = padding
    fills = fill if isinstance(fill, (list, tuple)) else [fill]
    out = F.pad(image, [left, right, top, bottom], value=0)
    if any(fills):  # per-channel fill of the padded border
        h, w = image.shape[-2:]
        keep = torch.zeros(out.shape[-2:], dtype=torch.bool)
        keep[top:top + h, left:left + w] = True
        vals = torch.tensor(fills if len(fills) > 1 else fills * out.shape[-3], dtype=out.dtype).view(-1, 1, 1)
        out = torch.where(keep, out, vals)
    return out


def normalize(image, mean, std, inplace=False):
    if not image.is_floating_point():
        raise TypeError(f"Input tensor should be a float tensor. Got {image.dtype}.")
    mean = torch.as_tensor(mean, dtype=image.dtype).view(-1, 1, 1)
    std = torch.as_tensor(std, dtype=image.dtype).view(-1, 1, 1)
    return image.sub(mean).div_(std)


def grayscale_to_rgb(image):
    return image if image.shape[-3] != 1 else image.expand(*image.shape[:-3], 3, *image.shape[-2:]).clone()


def to_dtype(image, dtype=torch.float32, scale=False):
    if image.dtype == dtype or not scale:
        return image.to(dtype)
    if image.is_floating_point() and not dtype.is_floating_point:
        return image.mul(255 + 1.0 - 1e-3).to(dtype)
    if not image.is_floating_point() and dtype.is_floating_point:
        return image.to(dtype).mul_(1.0 / 255)
    return image.to(dtype)


def pil_to_tensor(pic):
    a = np.array(pic, copy=True)
    a = a[:, :, None] if a.ndim == 2 else a
    return torch.from_numpy(a).permute(2, 0, 1).contiguous()
'''

FILES = {
    "torchvision/__init__.py": '__version__ = "0.29.0"\n',
    "torchvision/io.py": "",  # imported (not used for images) by transformers.video_utils
    "torchvision/transforms/__init__.py": "from torchvision.transforms.v2.functional import InterpolationMode\n",
    "torchvision/transforms/functional.py": "from torchvision.transforms.v2.functional import *  # noqa\n",
    "torchvision/transforms/v2/__init__.py": "",
    "torchvision/transforms/v2/functional.py": FUNCTIONAL,
    "torchvision-0.29.0.dist-info/METADATA": "Metadata-Version: 2.1\nName: torchvision\nVersion: 0.29.0\n",
    "torchvision-0.29.0.dist-info/RECORD": "",
    "torchvision-0.29.0.dist-info/top_level.txt": "torchvision\n",
}


def write_shim(folder: Path) -> Path:
    for rel, text in FILES.items():
        p = folder / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return folder
