"""transformers' Llama4ImageProcessor / Llama4Processor as the reference, run in a subprocess.

The reference processor needs torchvision, which must never be importable in the project's venv
(its published wheel is a CUDA build: importing it against CPU/ROCm torch fails and breaks every
transformers import). So the reference runs in a child process whose PYTHONPATH holds either
- the real torchvision, installed with `pip install --no-deps --target` into a separate folder
  (AMD_LLAMA4_TORCHVISION_DIR, else ~/.cache/amd_llama4/torchvision-ref, installed on first use),
  imported after making `torch.library.register_fake` skip its missing C++ ops; or, when it cannot
  be installed (offline CI),
- tv_shim: a stand-in for the four torchvision functions the processor calls, written from
  torchvision's source (tests/multimodal/tv_shim.py); test_tv_shim checks it against the real one.
Either way the tile grid, resize targets, padding, tiling, thumbnail and bf16 maths are
transformers' own code.

Child mode: `python hf_image_reference.py SPEC.json OUT.pt` (SPEC: {"tasks": [...]}).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
DEFAULT_TV_DIR = Path.home() / ".cache" / "amd_llama4" / "torchvision-ref"


def make_image(h: int, w: int, seed: int, mode: str = "RGB"):
    """A deterministic test image: smooth gradients plus noise (both matter for resampling)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    yy, xx = np.meshgrid(np.linspace(0, 1, h), np.linspace(0, 1, w), indexing="ij")
    base = np.stack([yy * 255, xx * 255, (1 - yy * xx) * 255], -1)
    px = np.clip(base + rng.normal(0, 40, (h, w, 3)), 0, 255).astype(np.uint8)  # [h, w, 3]
    if mode == "RGBA":
        alpha = rng.integers(0, 256, (h, w, 1), dtype=np.uint8)
        return Image.fromarray(np.concatenate([px, alpha], -1), "RGBA")
    img = Image.fromarray(px, "RGB")
    return img.convert(mode) if mode != "RGB" else img


# -- parent side --------------------------------------------------------------------------------

def _real_torchvision_dir() -> Path | None:
    d = Path(os.environ.get("AMD_LLAMA4_TORCHVISION_DIR", DEFAULT_TV_DIR))
    if (d / "torchvision" / "__init__.py").is_file():
        return d
    if os.environ.get("AMD_LLAMA4_NO_TORCHVISION_INSTALL"):
        return None
    try:
        r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(d),
                            "torchvision"], capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return d if r.returncode == 0 and (d / "torchvision" / "__init__.py").is_file() else None


def reference_path(tmp: Path, real: bool | None = None) -> tuple[str, str]:
    """-> (PYTHONPATH entry providing torchvision, 'real' | 'shim'). real=None: real if obtainable."""
    if real is not False:
        d = _real_torchvision_dir()
        if d is not None:
            return str(d), "real"
        if real:
            raise RuntimeError("real torchvision not available (set AMD_LLAMA4_TORCHVISION_DIR)")
    from tests.multimodal.tv_shim import write_shim

    return str(write_shim(tmp / "tv_shim")), "shim"


def run_reference(tasks: list[dict], tmp: Path, real: bool | None = None) -> tuple[list, str]:
    """Run `tasks` in a child process with transformers' processor; -> (results, 'real' | 'shim')."""
    import torch

    tv, kind = reference_path(tmp, real)
    spec, out = tmp / f"spec_{kind}.json", tmp / f"out_{kind}.pt"
    spec.write_text(json.dumps({"tasks": tasks, "real": kind == "real"}))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([tv, str(REPO)]), "OMP_NUM_THREADS": "1",
           "TRANSFORMERS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    r = subprocess.run([sys.executable, str(Path(__file__)), str(spec), str(out)], env=env,
                       capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        raise RuntimeError(f"reference processor ({kind} torchvision) failed:\n{r.stderr[-4000:]}")
    return torch.load(out), kind


# -- child side ---------------------------------------------------------------------------------

def _import_real_torchvision() -> None:
    import torch
    import torch.library

    orig = torch.library.register_fake

    def tolerant(op, func=None, /, *args, **kwargs):
        def apply(f):
            try:
                return orig(op, f, *args, **kwargs)
            except RuntimeError:  # "operator torchvision::nms does not exist": no C++ ops in this torch
                return f
        return apply(func) if func is not None else apply

    torch.library.register_fake = tolerant
    import torchvision  # noqa: F401


def _processor(cfg: dict):
    from transformers import Llama4ImageProcessor

    return Llama4ImageProcessor(**cfg)


def _pixels(task: dict):
    """Images through the reference image processor -> {pixel_values, aspect_ratios}."""
    p = _processor(task["config"])
    images = [make_image(*im) for im in task["images"]]
    out = p(images, return_tensors="pt")
    return {"pixel_values": out["pixel_values"], "aspect_ratios": out["aspect_ratios"].tolist()}


def _geometry(task: dict):
    """Grid and resize target per image size, recorded from the reference's own resize calls (the
    resizes themselves are skipped: the sizes go up to many megapixels)."""
    import torch

    p = _processor(task["config"])
    calls = []

    def fake_resize(image, size, **kw):
        calls.append((int(size.height), int(size.width)))
        return torch.zeros(*image.shape[:-2], int(size.height), int(size.width), dtype=image.dtype)

    p.resize = fake_resize
    res = []
    for h, w in task["sizes"]:
        calls.clear()
        out = p(torch.zeros(1, 1, 1, dtype=torch.uint8).expand(3, h, w), return_tensors="pt")
        res.append((tuple(out["aspect_ratios"][0].tolist()), calls[0]))
    return res


def _prompts(task: dict):
    """Llama4Processor(text, images) with the tiny tokenizer -> input_ids per prompt."""
    from transformers import Llama4Processor, PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(tokenizer_file=task["tokenizer_file"])
    proc = Llama4Processor(image_processor=_processor(task["config"]), tokenizer=tok,
                           patch_size=task["patch_size"], pixel_shuffle_ratio=task["pixel_shuffle_ratio"])
    res = []
    for text, ims in task["prompts"]:
        out = proc(text=[text], images=[make_image(*im) for im in ims] or None, return_tensors="pt",
                   add_special_tokens=False)
        res.append(out["input_ids"][0].tolist())
    return res


def main(spec_path: str, out_path: str) -> None:
    import torch

    spec = json.loads(Path(spec_path).read_text())
    if spec["real"]:
        _import_real_torchvision()
    run = {"pixels": _pixels, "geometry": _geometry, "prompts": _prompts}
    torch.save([run[t["kind"]](t) for t in spec["tasks"]], out_path)


if __name__ == "__main__":
    main(*sys.argv[1:3])
