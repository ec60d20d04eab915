"""Tokenizer: HF `tokenizer.json` through `tokenizers`, the chat template through jinja2.

`Tokenizer.from_pretrained("tiny-scout")` (any name starting with "tiny") loads the small byte-level
BPE tokenizer packaged in amd_llama4/assets/tiny_tokenizer (built by scripts/make_tiny_tokenizer.py);
a folder loads its tokenizer.json, tokenizer_config.json, and, when present, chat_template.jinja /
chat_template.json (newer HF saves) and generation_config.json / config.json (eos ids).
"""
from __future__ import annotations

import json
from datetime import datetime
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer as _HFTokenizer

ALLOWED_ROLES = ("system", "developer", "user", "assistant", "tool", "ipython")
# OpenAI's newer roles as Llama 4 knows them: developer instructions are its system prompt; tool
# results are its "ipython" turns.
ROLE_ALIASES = {"developer": "system", "tool": "ipython"}
# Content part types: text, and images as the HF templates ("image") and the OpenAI API ("image_url")
# spell them; both render as the template's image placeholder (Llama 4: one <|image|> each).
IMAGE_PART_TYPES = ("image", "image_url")


def tiny_tokenizer_dir() -> Path:
    return Path(str(resources.files("amd_llama4") / "assets" / "tiny_tokenizer"))


@lru_cache(maxsize=1)
def byte_decoder() -> dict[str, int]:
    """Inverse of the byte-level BPE alphabet (GPT-2 convention): printable Latin-1 bytes map to
    themselves, the other 68 bytes to chars 256.. in byte order."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
            *range(ord("®"), ord("ÿ") + 1)]
    chars = {b: b for b in keep}
    extra = 0
    for b in range(256):
        if b not in chars:
            chars[b] = 256 + extra
            extra += 1
    return {chr(c): b for b, c in chars.items()}


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: invalid JSON ({e})") from e


def _token_content(tok: Any) -> str | None:
    # tokenizer_config stores special tokens as "<|x|>" or {"content": "<|x|>", ...}.
    if isinstance(tok, dict):
        return tok.get("content")
    return tok if isinstance(tok, str) else None


def _as_id_list(v: Any) -> list[int]:
    if v is None:
        return []
    return [int(x) for x in v] if isinstance(v, (list, tuple)) else [int(v)]


class Tokenizer:
    def __init__(self, hf: _HFTokenizer, config: dict | None = None, chat_template: str | None = None,
                 extra_eos_ids: list[int] | None = None, bos_id_hint: int | None = None,
                 pad_id_hint: int | None = None, source: str = "", byte_level: bool = False):
        self._tok = hf
        self._config = config or {}
        self.chat_template = chat_template
        self.source = source
        # True when the decoder is plain byte-level: token strings map 1:1 to bytes, which lets the
        # streaming detokenizer work on bytes (exact, O(1) per token) instead of re-decoding windows.
        self.is_byte_level = byte_level
        self._byte_cache: dict[int, bytes] = {}

        def lookup(key: str) -> int | None:
            s = _token_content(self._config.get(key))
            return self._tok.token_to_id(s) if s is not None else None

        self.bos_token_id: int | None = lookup("bos_token")
        if self.bos_token_id is None:
            self.bos_token_id = bos_id_hint
        self.pad_token_id: int | None = lookup("pad_token")
        if self.pad_token_id is None:
            self.pad_token_id = pad_id_hint
        eos = lookup("eos_token")
        ids = list(extra_eos_ids or []) + ([eos] if eos is not None else [])
        self.eos_token_ids: list[int] = list(dict.fromkeys(ids))  # ordered union
        added = self._tok.get_added_tokens_decoder()
        self._added_ids = frozenset(added)
        self.all_special_ids: list[int] = sorted(i for i, t in added.items() if t.special)
        self._special_set = frozenset(self.all_special_ids)

    # -- loading ---------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path_or_preset: str | Path) -> "Tokenizer":
        path = Path(path_or_preset)
        if path.suffix.lower() == ".gguf":  # llama.cpp's GGUF: from its tokenizer.ggml.* metadata
            from amd_llama4.gguf.tokenizer import tokenizer_parts_from_gguf

            parts = tokenizer_parts_from_gguf(path)
            return cls(parts["hf"], parts["config"], parts["chat_template"], parts["eos_ids"],
                       source=parts["source"], byte_level=True)
        if not path.is_dir():
            if str(path_or_preset).startswith("tiny"):
                path = tiny_tokenizer_dir()
            else:
                raise FileNotFoundError(
                    f"tokenizer: {path_or_preset!r} is neither a folder nor a tiny preset name")
        tok_file = path / "tokenizer.json"
        if not tok_file.is_file():
            raise FileNotFoundError(f"tokenizer: {tok_file} not found (need a HF tokenizer.json)")
        hf = _HFTokenizer.from_file(str(tok_file))
        raw = _read_json(tok_file)
        dec = raw.get("decoder") or {}
        byte_level = dec.get("type") == "ByteLevel" and (raw.get("model") or {}).get("type") == "BPE"

        cfg_file = path / "tokenizer_config.json"
        config = _read_json(cfg_file) if cfg_file.is_file() else {}
        template = _find_chat_template(path, config)

        # eos: generation_config (list on Instruct models) first, then config.json, then tokenizer_config.
        eos_ids: list[int] = []
        bos_hint = pad_hint = None
        for name in ("generation_config.json", "config.json"):
            f = path / name
            if f.is_file():
                c = _read_json(f)
                c = c.get("text_config", c) if "eos_token_id" not in c else c
                eos_ids += _as_id_list(c.get("eos_token_id"))
                bos_hint = bos_hint if bos_hint is not None else c.get("bos_token_id")
                pad_hint = pad_hint if pad_hint is not None else c.get("pad_token_id")
        return cls(hf, config, template, eos_ids, bos_hint, pad_hint, source=str(path), byte_level=byte_level)

    # -- basics ----------------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def id_to_token(self, token_id: int) -> str:
        s = self._tok.id_to_token(int(token_id))
        if s is None:
            raise ValueError(f"token id {token_id} out of range [0, {self.vocab_size})")
        return s

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    def is_special(self, token_id: int) -> bool:
        return token_id in self._special_set

    def encode(self, text: str, add_bos: bool = True) -> list[int]:
        """Special-token strings in `text` (e.g. from the chat template) become their ids. bos is
        prepended only if asked and not already the first id."""
        ids = self._tok.encode(text, add_special_tokens=False).ids
        if add_bos and self.bos_token_id is not None and (not ids or ids[0] != self.bos_token_id):
            ids = [self.bos_token_id, *ids]
        return ids

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def token_text(self, token_id: int) -> str:
        """Printable text of one token (for logprob entries); partial UTF-8 shows as U+FFFD."""
        return self.decode([token_id], skip_special_tokens=False)

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes one token stands for (byte-level BPE only; special/added tokens: their UTF-8)."""
        b = self._byte_cache.get(token_id)
        if b is None:
            if not self.is_byte_level:
                raise ValueError(f"token_bytes: {self.source} is not a byte-level BPE tokenizer")
            s = self.id_to_token(token_id)
            if token_id in self._added_ids:
                b = s.encode("utf-8")
            else:
                table = byte_decoder()
                b = bytes(table[c] for c in s) if all(c in table for c in s) else s.encode("utf-8")
            self._byte_cache[token_id] = b
        return b

    # -- chat ------------------------------------------------------------------------------------
    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True,
                            tokenize: bool = False, tools: list[dict] | None = None) -> str | list[int]:
        """Render messages with the model's jinja2 chat template. The text starts with bos, so
        tokenize=True does not add a second one. `tools`: OpenAI tool dicts
        ({"type": "function", "function": {name, description, parameters}}), given to the template
        as transformers does; assistant messages may carry `tool_calls` (arguments as JSON text or a
        dict: the template gets a dict, as Llama templates expect)."""
        if self.chat_template is None:
            raise ValueError(
                f"tokenizer {self.source}: no chat template (looked for chat_template.jinja, "
                "chat_template.json and 'chat_template' in tokenizer_config.json)")
        _validate_messages(messages)
        if tools is not None and (not isinstance(tools, (list, tuple)) or not all(isinstance(t, dict) for t in tools)):
            raise ValueError("tools: must be a list of tool dicts")
        text = _compiled(self.chat_template).render(
            messages=_template_messages(messages), add_generation_prompt=add_generation_prompt,
            tools=list(tools) if tools else None,
            bos_token=_token_content(self._config.get("bos_token")) or "",
            eos_token=_token_content(self._config.get("eos_token")) or "",
            pad_token=_token_content(self._config.get("pad_token")) or "",
        )
        return self.encode(text, add_bos=True) if tokenize else text


def _find_chat_template(path: Path, config: dict) -> str | None:
    jinja_file = path / "chat_template.jinja"
    if jinja_file.is_file():
        return jinja_file.read_text(encoding="utf-8")
    json_file = path / "chat_template.json"
    if json_file.is_file():
        t = _read_json(json_file).get("chat_template")
        if t is not None:
            return _pick_template(t, json_file)
    t = config.get("chat_template")
    return _pick_template(t, path / "tokenizer_config.json") if t is not None else None


def _pick_template(t: Any, where: Path) -> str:
    if isinstance(t, str):
        return t
    if isinstance(t, list):  # named templates: [{"name": "default", "template": "..."}, ...]
        named = {d.get("name"): d.get("template") for d in t if isinstance(d, dict)}
        if isinstance(named.get("default"), str):
            return named["default"]
    raise ValueError(f"{where}: chat_template must be a string or a list with a 'default' entry")


def _validate_messages(messages: Any) -> None:
    if not isinstance(messages, (list, tuple)) or not messages:
        raise ValueError("messages: must be a non-empty list of {'role', 'content'} dicts")
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise ValueError(f"messages[{i}]: must be a dict, got {type(m).__name__}")
        role = m.get("role")
        if role not in ALLOWED_ROLES:
            raise ValueError(f"messages[{i}].role: {role!r} not one of {list(ALLOWED_ROLES)}")
        if ROLE_ALIASES.get(role, role) == "system" and i != 0:
            raise ValueError(f"messages[{i}]: a system message must come first")
        content = m.get("content")
        if m.get("tool_calls"):  # (an empty list: no calls)
            _validate_tool_calls(m, i)
            if content is None:
                continue  # an assistant turn of calls only
        if isinstance(content, str):
            continue
        if not isinstance(content, list):
            raise ValueError(f"messages[{i}].content: must be a string or a list of parts, "
                             f"got {type(content).__name__}")
        for j, part in enumerate(content):
            kind = part.get("type") if isinstance(part, dict) else type(part).__name__
            if kind in IMAGE_PART_TYPES:
                continue  # the image itself is checked where it is decoded
            if kind != "text":
                raise ValueError(f"messages[{i}].content[{j}]: part type {kind!r} is not supported; use "
                                 f"'text', 'image' or 'image_url'")
            if not isinstance(part.get("text"), str):
                raise ValueError(f"messages[{i}].content[{j}].text: must be a string")


def _validate_tool_calls(m: dict, i: int) -> None:
    calls = m["tool_calls"]
    if m.get("role") != "assistant":
        raise ValueError(f"messages[{i}].tool_calls: only assistant messages carry tool calls")
    if not isinstance(calls, (list, tuple)):
        raise ValueError(f"messages[{i}].tool_calls: must be a list")
    for j, call in enumerate(calls):
        fn = call.get("function", call) if isinstance(call, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise ValueError(f"messages[{i}].tool_calls[{j}].function.name: must be a string")
        _call_arguments(fn.get("arguments"), f"messages[{i}].tool_calls[{j}].function.arguments")


def _call_arguments(args: Any, where: str) -> dict:
    """A call's arguments as a dict (OpenAI sends JSON text)."""
    if args is None:
        return {}
    if isinstance(args, str):
        try:
            args = json.loads(args) if args.strip() else {}
        except json.JSONDecodeError as e:
            raise ValueError(f"{where}: not valid JSON ({e})") from None
    if not isinstance(args, dict):
        raise ValueError(f"{where}: must be a JSON object")
    return args


def _template_calls(calls: list) -> list[dict]:
    out = []
    for call in calls:
        fn = call.get("function", call)
        fn = {**fn, "arguments": _call_arguments(fn.get("arguments"), "tool_calls")}
        out.append({**call, "function": fn} if "function" in call else fn)
    return out


def count_image_parts(messages: list[dict]) -> int:
    """Image content parts in `messages`: the `<|image|>` placeholders the template will write."""
    return sum(1 for m in messages if isinstance(m.get("content"), list)
               for p in m["content"] if isinstance(p, dict) and p.get("type") in IMAGE_PART_TYPES)


def _template_messages(messages: list[dict]) -> list[dict]:
    """OpenAI's image_url parts as {'type': 'image'}, the spelling HF chat templates test for; roles
    through ROLE_ALIASES."""
    out = []
    for m in messages:
        if m.get("role") in ROLE_ALIASES:
            m = {**m, "role": ROLE_ALIASES[m["role"]]}
        if m.get("tool_calls"):
            m = {**m, "tool_calls": _template_calls(m["tool_calls"])}
        content = m.get("content")
        if isinstance(content, list) and any(p.get("type") == "image_url" for p in content):
            m = {**m, "content": [{"type": "image"} if p.get("type") == "image_url" else p for p in content]}
        out.append(m)
    return out


def _raise(msg: str) -> None:
    raise ValueError(f"chat template: {msg}")


def _tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None,
            sort_keys: bool = False) -> str:
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


@lru_cache(maxsize=8)
def _compiled(template: str):
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    # Same environment settings as HF transformers, so released templates render identically:
    # loop controls, and its tojson (plain json.dumps: no HTML escaping, keys in order).
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(template)
