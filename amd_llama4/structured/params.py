"""StructuredOutputsParams: what a request constrains its output to (vLLM's names).

Exactly one of `json` (a JSON schema, as a dict or its JSON text), `regex`, `choice` (the output is
one of these strings), `grammar` (llguidance's Lark syntax; llama.cpp's GBNF is accepted too) or
`json_object` (any JSON object). Checked here, without a tokenizer, so a bad schema / regex /
grammar is a ValueError naming the field when the request is made, never an error mid-generation.
"""
from __future__ import annotations

import json as _json
from collections import OrderedDict
from dataclasses import dataclass

_KINDS = ("json", "regex", "choice", "grammar", "json_object")
MAX_SPEC_CHARS = 1 << 20  # a 1 MiB schema / grammar is far beyond any real one: refuse, do not compile
MAX_CHOICES = 1024

# JSON output without free whitespace between tokens: a weak (or random-weight) model would otherwise
# spend its token budget on spaces and newlines that the grammar allows anywhere.
JSON_DEFAULTS = {"whitespace_flexible": False}


@dataclass(frozen=True)
class StructuredOutputsParams:
    json: dict | str | bool | None = None
    regex: str | None = None
    choice: list[str] | None = None
    grammar: str | None = None
    json_object: bool = False

    def __post_init__(self) -> None:
        set_ = [k for k in _KINDS if (getattr(self, k) not in (None, False))]
        if len(set_) != 1:
            raise ValueError("structured_outputs: exactly one of json, regex, choice, grammar, json_object must be "
                             f"set, got {set_ or 'none'}")
        kind = set_[0]
        if kind == "json":
            _check_schema(self.json)
        elif kind in ("regex", "grammar"):
            v = getattr(self, kind)
            if not isinstance(v, str) or not v.strip():
                raise ValueError(f"structured_outputs.{kind}: must be a non-empty string")
            if len(v) > MAX_SPEC_CHARS:
                raise ValueError(f"structured_outputs.{kind}: longer than {MAX_SPEC_CHARS} characters")
        elif kind == "choice":
            c = self.choice
            if not isinstance(c, (list, tuple)) or not c or any(not isinstance(s, str) or not s for s in c):
                raise ValueError("structured_outputs.choice: must be a non-empty list of non-empty strings")
            if len(c) > MAX_CHOICES:
                raise ValueError(f"structured_outputs.choice: {len(c)} choices; at most {MAX_CHOICES}")
            object.__setattr__(self, "choice", list(c))
        elif self.json_object is not True:
            raise ValueError("structured_outputs.json_object: must be true or false")
        err = validate_grammar(*self.key())
        if err:
            raise ValueError(f"structured_outputs.{kind}: {err}")

    @property
    def kind(self) -> str:
        return next(k for k in _KINDS if getattr(self, k) not in (None, False))

    def key(self) -> tuple[str, str]:
        """(kind, canonical spec text): the compile caches' key (dicts as sorted-key JSON)."""
        kind = self.kind
        if kind == "json":
            spec = self.json if isinstance(self.json, str) else _json.dumps(self.json, sort_keys=True)
        elif kind == "choice":
            spec = _json.dumps(self.choice)
        elif kind == "json_object":
            spec = ""
        else:
            spec = getattr(self, kind)
        return kind, spec


def _check_schema(v) -> None:
    if isinstance(v, str):
        if len(v) > MAX_SPEC_CHARS:
            raise ValueError(f"structured_outputs.json: longer than {MAX_SPEC_CHARS} characters")
        try:
            v = _json.loads(v)
        except ValueError as e:
            raise ValueError(f"structured_outputs.json: not valid JSON ({e})") from None
    if not isinstance(v, (dict, bool)):
        raise ValueError(f"structured_outputs.json: a JSON schema must be an object (or a boolean), got "
                         f"{type(v).__name__}")


def grammar_text(kind: str, spec: str) -> str:
    """llguidance's grammar definition of (kind, spec) (StructuredOutputsParams.key())."""
    import llguidance as llg

    if kind == "json":
        return llg.LLMatcher.grammar_from_json_schema(_json.loads(spec), defaults=JSON_DEFAULTS)
    if kind == "json_object":
        return llg.LLMatcher.grammar_from_json_schema({"type": "object"}, defaults=JSON_DEFAULTS)
    return llg.grammar_from({"regex": "regex", "choice": "choice", "grammar": "grammar"}[kind], spec)


_VALIDATED: OrderedDict[tuple[str, str], str] = OrderedDict()  # key -> "" (valid) or the error: LRU
_VALIDATED_MAX = 512


def validate_grammar(kind: str, spec: str) -> str:
    """"" when (kind, spec) compiles, else llguidance's error text (tokenizer-independent; cached)."""
    key = (kind, spec)
    hit = _VALIDATED.get(key)
    if hit is not None:
        _VALIDATED.move_to_end(key)
        return hit
    import llguidance as llg

    try:
        err = llg.LLMatcher.validate_grammar(grammar_text(kind, spec), None)
    except (ValueError, TypeError, RuntimeError) as e:  # e.g. a schema llguidance cannot even convert
        err = str(e) or type(e).__name__
    _VALIDATED[key] = err = " ".join(err.split())  # one line: it goes into a 400's message
    if len(_VALIDATED) > _VALIDATED_MAX:
        _VALIDATED.popitem(last=False)
    return err
