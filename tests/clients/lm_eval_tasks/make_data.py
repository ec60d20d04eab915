#!/usr/bin/env python
"""Writes the jsonl data of the lm-eval task files beside it (run once; the output is committed, so the
tests never depend on the Python version's docstrings). The text is the first line of stdlib docstrings,
the tiny presets' training text (scripts/train_tiny.py), so the trained tiny model scores above chance
and its metrics are neither 0 nor 1, which makes "lm-eval's number == our direct computation" a sharp
check rather than 0 == 0.

    python tests/clients/lm_eval_tasks/make_data.py

- docstring_mc.jsonl (20 items): the first words of a docstring line, then 4 choices for the next word
  (the true one and 3 words drawn from other docstrings).
- docstring_gen.jsonl (10 items): the first half of a docstring line; target: the rest of the line
  (3 lines the tiny-scout model completes right, 7 it does not; see gen_items).
- docstring_chat.jsonl (10 items): "What does mod.attr do?" (the training chats' question); target:
  the first line of its docstring. 4 of them are enum members whose docstring is "An enumeration."
"""
from __future__ import annotations

import importlib
import inspect
import json
import random
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[2]))

from tests.quant.tiny_trained import TRAIN_MODULES  # noqa: E402


def doc_lines() -> list[tuple[str, str, str]]:
    out = []
    for mod in TRAIN_MODULES:
        m = importlib.import_module(mod)
        for attr in sorted(dir(m)):
            doc = None if attr.startswith("_") else inspect.getdoc(getattr(m, attr, None))
            if doc:
                out.append((mod, attr, doc.split("\n")[0].strip()))
    return out


def gen_items(lines: list[tuple[str, str, str]], right: int = 3, wrong: int = 7) -> list[dict]:
    """The first half of a line; target: the rest. The tiny model completes few lines right (~1 in 40),
    so the lines are scanned with greedy decoding (as lm-eval asks for it: no BOS, stop at "." or a
    newline) and `right` completed lines are kept with `wrong` others."""
    from amd_llama4 import LLM, SamplingParams

    llm = LLM("tiny-scout")
    params = SamplingParams(temperature=0, max_tokens=16, stop=["\n", "."])
    good, bad = [], []
    for _, _, ln in lines:
        w = ln.rstrip(".").split()
        item = {"context": " ".join(w[:len(w) // 2]), "target": " ".join(w[len(w) // 2:])}
        ids = llm.tokenizer.encode(item["context"], add_bos=False)
        text = llm.generate([ids], params)[0].outputs[0].text
        (good if text.strip() == item["target"] else bad).append(item)
        if len(good) >= right and len(bad) >= wrong:
            break
    items = good[:right] + bad[:wrong]
    random.Random(0).shuffle(items)
    return items


def main() -> None:
    rng = random.Random(16)
    lines = doc_lines()
    plain = [(m, a, ln) for m, a, ln in lines if len(ln.split()) >= 6 and ln.isascii() and ln.endswith(".")]
    plain = sorted({ln: (m, a, ln) for m, a, ln in plain}.values())  # one item per distinct line
    rng.shuffle(plain)
    words = sorted({w for _, _, ln in plain for w in ln.split() if re.fullmatch(r"[a-z]{3,}", w)})

    mc = []
    for _, _, ln in plain[:20]:
        w = ln.split()
        k = rng.randrange(2, len(w) - 1)
        gold = w[k]
        distract = rng.sample([x for x in words if x != gold], 3)
        choices = distract[:]
        pos = rng.randrange(4)
        choices.insert(pos, gold)
        mc.append({"context": " ".join(w[:k]), "choices": choices, "gold": pos})

    gen = gen_items(plain[20:])

    enums = [(m, a, ln) for m, a, ln in lines if ln == "An enumeration."]
    others = [(m, a, ln) for m, a, ln in lines if ln != "An enumeration." and ln.isascii() and len(ln) < 60]
    chat = [{"question": f"What does {m}.{a} do?", "target": ln}
            for m, a, ln in rng.sample(enums, 4) + rng.sample(others, 6)]
    rng.shuffle(chat)

    for name, rows in (("docstring_mc", mc), ("docstring_gen", gen), ("docstring_chat", chat)):
        with open(HERE / f"{name}.jsonl", "w") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
        print(f"{name}.jsonl: {len(rows)} items")


if __name__ == "__main__":
    main()
