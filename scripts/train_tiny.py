#!/usr/bin/env python
"""Train the tiny presets' text weights briefly, so that `make serve` answers in words, not random bytes.

Training text: docstrings of the stdlib modules tests/quant/tiny_trained.py lists (PSF-licensed, fine
to redistribute), half as plain text and half as chats in the Llama 4 format: the user asks
"What does json.dumps do?", the assistant answers with the first paragraph of that docstring, then
<|eot|> (so that generation stops). Deterministic for a given seed and thread count; ~1-2 minutes for
both presets on 2 idle cores. Output: amd_llama4/assets/tiny_weights/<preset>.safetensors (bf16
storage; text weights only, the vision tower stays random), plus a NOTICE naming the text's licence.

    python scripts/train_tiny.py [--steps N] [--presets tiny-scout tiny-maverick] [--out DIR]
"""
from __future__ import annotations

import argparse
import importlib
import inspect
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from amd_llama4.config import preset  # noqa: E402
from amd_llama4.engine.tokenizer import Tokenizer  # noqa: E402
from amd_llama4.model.loader import build_model  # noqa: E402
# The differentiable expert computation, the backend switch, the schedule and the corpus are the FP8
# tests' trained fixture's: one training recipe in the repository.
from tests.quant.tiny_trained import TRAIN_MODULES, TrainSpec, fit, module_text  # noqa: E402

OUT = REPO / "amd_llama4" / "assets" / "tiny_weights"
SPEC = TrainSpec(steps=600, batch=8, seq=128, lr=3e-3, warmup=30)
NOTICE = """The weights in this folder were trained by scripts/train_tiny.py on the docstrings of Python
standard-library modules (Copyright Python Software Foundation; PSF License Agreement,
https://docs.python.org/3/license.html). They are tiny demonstration models, not language models
of any quality.
"""


def chat_examples(tok: Tokenizer) -> list[list[int]]:
    """One token list per documented public attribute: a user question and the docstring's first
    paragraph as the answer, closed by <|eot|>."""
    eot = tok.token_to_id("<|eot|>")
    out = []
    for name in TRAIN_MODULES:
        mod = importlib.import_module(name)
        for attr in sorted(dir(mod)):
            doc = None if attr.startswith("_") else inspect.getdoc(getattr(mod, attr, None))
            if not doc:
                continue
            answer = doc.split("\n\n")[0].strip()[:400]
            q = [{"role": "user", "content": f"What does {name}.{attr} do?"}]
            out.append(tok.apply_chat_template(q, tokenize=True) + tok.encode(answer, add_bos=False) + [eot])
    return out


def batch(g: torch.Generator, text: torch.Tensor, chats: list[list[int]], spec: TrainSpec, bos: int) -> torch.Tensor:
    """[B, seq + 1]: even rows are plain-text windows after bos, odd rows chats packed from a random one."""
    rows = []
    for i in range(spec.batch):
        if i % 2 == 0:
            s = int(torch.randint(0, text.numel() - spec.seq, (1,), generator=g))
            rows.append(F.pad(text[s:s + spec.seq], (1, 0), value=bos))
        else:
            j, ids = int(torch.randint(0, len(chats), (1,), generator=g)), []
            while len(ids) < spec.seq + 1:
                ids += chats[j % len(chats)]
                j += 1
            rows.append(torch.tensor(ids[:spec.seq + 1]))
    return torch.stack(rows)


def train(name: str, spec: TrainSpec, seed: int = 0) -> tuple[dict, float]:
    tok = Tokenizer.from_pretrained(name)
    text = torch.tensor(tok.encode(module_text(TRAIN_MODULES), add_bos=False))
    chats = chat_examples(tok)
    torch.manual_seed(seed)
    model = build_model(preset(name)).init_random(seed)
    g = torch.Generator().manual_seed(1000 + seed)

    def log(step: int, losses: list[float]) -> None:
        if step % 200 == 0 or step == spec.steps - 1:
            print(f"{name} step {step}: loss {sum(losses[-50:]) / len(losses[-50:]):.3f}", flush=True)

    losses = fit(model, spec, lambda: batch(g, text, chats, spec, tok.bos_token_id), log)
    state = {k: v.detach().to(torch.bfloat16).contiguous() for k, v in model.state_dict().items()}
    return state, sum(losses[-50:]) / len(losses[-50:])


def main() -> int:
    from safetensors.torch import save_file

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", nargs="+", default=["tiny-scout", "tiny-maverick"])
    ap.add_argument("--steps", type=int, default=SPEC.steps)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    spec = TrainSpec(**{**SPEC.__dict__, "steps": args.steps})
    args.out.mkdir(parents=True, exist_ok=True)
    for name in args.presets:
        t0 = time.perf_counter()
        state, loss = train(name, spec)
        save_file(state, str(args.out / f"{name}.safetensors"),
                  metadata={"preset": name, "steps": str(spec.steps), "train_loss": f"{loss:.3f}",
                            "recipe": "scripts/train_tiny.py"})
        print(f"{name}: {time.perf_counter() - t0:.0f} s, final loss {loss:.3f}")
    (args.out / "NOTICE").write_text(NOTICE)
    return 0


if __name__ == "__main__":
    sys.exit(main())
