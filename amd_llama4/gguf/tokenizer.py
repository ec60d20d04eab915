"""Our Tokenizer from a GGUF file's `tokenizer.ggml.*` metadata (llama.cpp's "gpt2" byte-level BPE).

The file holds the vocabulary, the merges, each token's type, the special ids, the chat template
and a pre-tokenizer *name* (`tokenizer.ggml.pre`); the regex behind the name is llama.cpp's
(src/llama-vocab.cpp), as in the model's original tokenizer.json.
"""
from __future__ import annotations

import os

from amd_llama4.gguf.reader import GGUFError, eog_ids, field, open_gguf

# tokenizer.ggml.pre -> the original tokenizer.json Split regex
LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
LLAMA4_REGEX = (r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
                r"(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+"
                r"[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
PRE_REGEX = {"llama-bpe": LLAMA3_REGEX, "llama3": LLAMA3_REGEX, "llama4": LLAMA4_REGEX, "gpt-4o": LLAMA4_REGEX}
# GGUF token types (llama.cpp's llama_token_type)
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6


def pre_name(regex: str | None) -> str:
    """The tokenizer.ggml.pre name llama.cpp knows for a tokenizer.json Split regex."""
    if regex == LLAMA4_REGEX:
        return "llama4"
    if regex == LLAMA3_REGEX:
        return "llama-bpe"
    return "default"


def tokenizer_parts_from_gguf(path: str | os.PathLike, reader=None) -> dict:
    """The pieces of our engine Tokenizer from the GGUF metadata of `path` (engine/tokenizer.py builds it:
    this package stays below the engine): the HF `tokenizers` object, the special-token config, the chat
    template, the end-of-generation ids and the source path."""
    from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers
    from tokenizers import Tokenizer as HFTokenizer

    p = os.fspath(path)
    r = reader if reader is not None else open_gguf(p)
    kind = field(r, "tokenizer.ggml.model", p)
    if kind != "gpt2":
        raise GGUFError(f"{p}: metadata 'tokenizer.ggml.model' is {kind!r}; only 'gpt2' (byte-level BPE, "
                        f"Llama 4's) is supported: pass tokenizer= a tokenizer folder instead")
    pre = field(r, "tokenizer.ggml.pre", p, "default")
    if pre not in PRE_REGEX:
        raise GGUFError(f"{p}: metadata 'tokenizer.ggml.pre' is {pre!r}, unsupported (known: {sorted(PRE_REGEX)})")
    tokens = [str(t) for t in field(r, "tokenizer.ggml.tokens", p)]
    types = [int(t) for t in field(r, "tokenizer.ggml.token_type", p, [NORMAL] * len(tokens))]
    if len(types) != len(tokens):
        raise GGUFError(f"{p}: metadata 'tokenizer.ggml.token_type' has {len(types)} entries for {len(tokens)} tokens")
    merges = [str(m) for m in field(r, "tokenizer.ggml.merges", p, [])]
    pairs = []
    for i, m in enumerate(merges):
        a, sep, b = m.partition(" ")
        if not sep:
            raise GGUFError(f"{p}: metadata 'tokenizer.ggml.merges'[{i}] {m!r} is not 'left right'")
        pairs.append((a, b))
    vocab: dict[str, int] = {}
    for i, t in enumerate(tokens):
        vocab.setdefault(t, i)
    hf = HFTokenizer(models.BPE(vocab=vocab, merges=pairs, ignore_merges=True, fuse_unk=False, byte_fallback=False))
    hf.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRE_REGEX[pre]), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    hf.decoder = decoders.ByteLevel()
    # control tokens are special (never split, skipped when decoding); user-defined ones are added
    hf.add_special_tokens([AddedToken(t, special=True, normalized=False)
                           for t, ty in zip(tokens, types) if ty == CONTROL])
    hf.add_tokens([AddedToken(t, special=False, normalized=False)
                   for t, ty in zip(tokens, types) if ty == USER_DEFINED])

    def tok(key: str) -> str | None:
        i = field(r, f"tokenizer.ggml.{key}_token_id", p, None)
        if i is None:
            return None
        if not 0 <= int(i) < len(tokens):
            raise GGUFError(f"{p}: metadata 'tokenizer.ggml.{key}_token_id' is {i}, outside the {len(tokens)} tokens")
        return tokens[int(i)]

    config = {k: v for k, v in (("bos_token", tok("bos")), ("eos_token", tok("eos")), ("pad_token", tok("padding")))
              if v is not None}
    template = field(r, "tokenizer.chat_template", p, None)
    return {"hf": hf, "config": config, "chat_template": template, "eos_ids": eog_ids(r, p), "source": p}
