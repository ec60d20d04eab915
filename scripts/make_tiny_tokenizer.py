#!/usr/bin/env python
"""Build the tiny presets' tokenizer: a real byte-level BPE (HF `tokenizers`) with exactly 512 ids.

Layout (fixed): ids 0..8 are the Llama 4 special tokens below, ids 9..264 the 256 byte-level base
tokens, then 241 merges, then ids 506..511 Llama 4's image special tokens (same strings as the
released tokenizer; last, so that adding them moved no text id). Trained on docstrings of a fixed
list of stdlib modules (offline, and the same on every machine with the same Python minor version)
plus a few multilingual sentences, so that multi-byte characters occur: common ones (é, ü) get merged
into one token, rare ones (中文, emoji) stay split across several byte tokens -- which the streaming
detokeniser tests rely on.

Deterministic: running it twice gives byte-identical files. The built files are committed in
amd_llama4/assets/tiny_tokenizer/; rerun only to change the tokenizer:

    python scripts/make_tiny_tokenizer.py [--out DIR] [--check]
"""
from __future__ import annotations

import argparse
import importlib
import inspect
import json
import sys
import tempfile
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

VOCAB_SIZE = 512
SPECIAL_TOKENS = [
    "<|finetune_right_pad|>",  # 0 pad
    "<|begin_of_text|>",  # 1 bos
    "<|end_of_text|>",  # 2
    "<|eot|>",  # 3
    "<|eom|>",  # 4
    "<|header_start|>",  # 5
    "<|header_end|>",  # 6
    "<|python_start|>",  # 7
    "<|python_end|>",  # 8
]
# Llama4Processor's image tokens, in the released tokenizer's order (ids 200080, 200081, 200084,
# 200085, 200090, 200092 there).
IMAGE_SPECIAL_TOKENS = [
    "<|image_start|>",  # 506
    "<|image_end|>",  # 507
    "<|tile_x_separator|>",  # 508
    "<|tile_y_separator|>",  # 509
    "<|image|>",  # 510: one per image in the chat template's output, expanded by the processor
    "<|patch|>",  # 511: the image_token_index, where image features go
]
EOS_IDS = [2, 3, 4]
# The committed files were built with this Python (stdlib docstrings differ between versions).
BUILT_WITH = (3, 11)

# Llama 3/4-style pre-tokenisation split (contractions, letter runs, up to 3 digits, punctuation, spaces).
SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# Llama 4 chat format, with tools, tool calls and tool results: kept readable in its own file.
CHAT_TEMPLATE = (Path(__file__).resolve().parent / "llama4_chat_template.jinja").read_text(encoding="utf-8")

STDLIB_MODULES = [
    "argparse", "base64", "bisect", "calendar", "collections", "contextlib", "csv", "dataclasses",
    "datetime", "difflib", "enum", "fractions", "functools", "heapq", "inspect", "json", "logging",
    "pathlib", "pprint", "queue", "random", "re", "shlex", "statistics", "string", "textwrap",
    "threading", "typing", "unittest", "uuid", "zipfile",
]

MULTILINGUAL = [
    "Le café est très bon, merci beaucoup. Déjà vu à l'école, où l'été était génial.",
    "Über den Wolken muss die Freiheit wohl grenzenlos sein. Grüße aus München, schöne Brücke.",
    "El niño comió una piña en España; ¿dónde está la estación?",
    "我们今天学习中文。你好，世界！这是一个测试。",
    "日本語のテキストも少し入れます。ありがとう。",
    "Привет, мир! Это тест.",
    "Emoji: 😀 🚀 🎉 👍🏽 — and symbols: € £ ¥ © ± × ÷ ∞ ≤ ≥ “quotes” ‘single’ …",
]


def corpus() -> list[str]:
    texts: list[str] = []
    for name in STDLIB_MODULES:
        mod = importlib.import_module(name)
        texts.append(inspect.getdoc(mod) or "")
        for attr in sorted(dir(mod)):
            if attr.startswith("_"):
                continue
            doc = inspect.getdoc(getattr(mod, attr, None))
            if doc:
                texts.append(doc)
    # Repeat the accented sentences so that é/ü/... earn merges; CJK and emoji stay rare (split).
    texts += MULTILINGUAL[:3] * 40 + MULTILINGUAL[3:]
    return texts


def build() -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE - len(IMAGE_SPECIAL_TOKENS), min_frequency=2, special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(corpus(), trainer=trainer)
    tok.add_special_tokens(IMAGE_SPECIAL_TOKENS)
    tok.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A $B",
        special_tokens=[("<|begin_of_text|>", 1)],
    )
    check(tok)
    return tok


def check(tok: Tokenizer) -> None:
    """The fixed layout the tiny presets and tests rely on."""
    if tok.get_vocab_size(with_added_tokens=True) != VOCAB_SIZE:
        raise SystemExit(f"vocab size {tok.get_vocab_size(with_added_tokens=True)} != {VOCAB_SIZE}")
    for i, s in enumerate(SPECIAL_TOKENS):
        if tok.token_to_id(s) != i:
            raise SystemExit(f"special token {s} has id {tok.token_to_id(s)}, expected {i}")
    first_image = VOCAB_SIZE - len(IMAGE_SPECIAL_TOKENS)
    for i, s in enumerate(IMAGE_SPECIAL_TOKENS, first_image):
        if tok.token_to_id(s) != i:
            raise SystemExit(f"image token {s} has id {tok.token_to_id(s)}, expected {i}")
    base = {tok.id_to_token(i) for i in range(len(SPECIAL_TOKENS), len(SPECIAL_TOKENS) + 256)}
    if base != set(pre_tokenizers.ByteLevel.alphabet()):
        raise SystemExit("ids 9..264 are not the 256 byte-level base tokens")


def tokenizer_config() -> dict:
    added = {
        str(i): {"content": s, "lstrip": False, "normalized": False, "rstrip": False,
                 "single_word": False, "special": True}
        for i, s in [*enumerate(SPECIAL_TOKENS),
                     *enumerate(IMAGE_SPECIAL_TOKENS, VOCAB_SIZE - len(IMAGE_SPECIAL_TOKENS))]
    }
    return {
        "added_tokens_decoder": added,
        "bos_token": SPECIAL_TOKENS[1],
        "eos_token": SPECIAL_TOKENS[3],
        "pad_token": SPECIAL_TOKENS[0],
        "chat_template": CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "model_max_length": 4096,
        "tokenizer_class": "PreTrainedTokenizerFast",
    }


def write(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    build().save(str(out / "tokenizer.json"), pretty=True)
    dump = lambda obj: json.dumps(obj, indent=2, ensure_ascii=False) + "\n"  # noqa: E731
    (out / "tokenizer_config.json").write_text(dump(tokenizer_config()), encoding="utf-8")
    gen = {"bos_token_id": 1, "eos_token_id": EOS_IDS, "pad_token_id": 0}
    (out / "generation_config.json").write_text(dump(gen), encoding="utf-8")


def main() -> int:
    default_out = Path(__file__).resolve().parents[1] / "amd_llama4" / "assets" / "tiny_tokenizer"
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=default_out)
    ap.add_argument("--check", action="store_true", help="rebuild in a temp dir and compare with --out")
    args = ap.parse_args()
    if not args.check:
        write(args.out)
        print(f"wrote {args.out} (python {sys.version_info.major}.{sys.version_info.minor})")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        write(Path(tmp))
        names = ("tokenizer.json", "tokenizer_config.json", "generation_config.json")
        diff = [n for n in names if (Path(tmp) / n).read_bytes() != (args.out / n).read_bytes()]
    print("identical" if not diff else f"differs: {diff}")
    return 1 if diff else 0


if __name__ == "__main__":
    sys.exit(main())
