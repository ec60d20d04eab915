"""`amd-llama4 convert --to gguf`: load a preset, checkpoint folder or GGUF and write it with gguf/writer.py."""
from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from amd_llama4.gguf.reader import GGUFError
from amd_llama4.gguf.writer import write_gguf

_log = logging.getLogger(__name__)


def export_gguf(source: str | os.PathLike, out: str | os.PathLike, outtype: str = "f32", seed: int | None = None,
                progress: bool = False) -> Path:
    """`amd-llama4 convert --to gguf`: a preset, checkpoint folder or GGUF to a new GGUF, with its tokenizer
    (tiny presets' packaged one, a folder's tokenizer.json, a GGUF's metadata) when it has one."""
    from amd_llama4.engine.tokenizer import Tokenizer
    from amd_llama4.model.loader import load_model

    src = os.fspath(source)
    if Path(out).exists():
        raise FileExistsError(f"{out} already exists")
    model = load_model(src, dtype=torch.float32, device="cpu", seed=seed, progress=progress)
    tok = None
    if src.startswith("tiny") or src.lower().endswith(".gguf") or (Path(src) / "tokenizer.json").is_file():
        try:
            tok = Tokenizer.from_pretrained(src)
        except (FileNotFoundError, GGUFError) as e:
            _log.warning("%s: exporting without a tokenizer (%s)", src, e)
    return write_gguf(model, out, outtype, tok, name=Path(src).name)


def run_convert(args) -> int:
    """`amd-llama4 convert --to gguf --model M --out X.gguf [--outtype T]` (the metadata read back and checked)."""
    import sys

    try:
        out = export_gguf(args.model, args.out, args.outtype, progress=not args.no_progress)
    except (FileExistsError, ValueError, ImportError) as e:  # GGUFError is a ValueError
        print(f"amd-llama4 convert: error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {out} (GGUF llama4, {args.outtype}; llama.cpp reads it)")
    return 0
