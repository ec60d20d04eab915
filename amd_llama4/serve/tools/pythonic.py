"""Llama 4's pythonic call list: `[get_weather(city="Paris"), add(a=1, b=[2, {"c": 3}])]`.

Parsed with `ast` and read as literals only (nothing is evaluated): keyword arguments whose values
are strings, numbers, booleans, None, lists/tuples and dicts of those; JSON's `true`/`false`/`null`
are accepted too (models trained on JSON schemas write them). Anything else -- a positional
argument, a variable, an expression, a call inside a call -- makes the whole list not a call."""
from __future__ import annotations

import ast
import math
import re
from typing import Any

from amd_llama4.serve.tools.calls import ParsedCall
from amd_llama4.serve.tools.streaming import CallFormat

_START = re.compile(r"\[\s*[A-Za-z_][A-Za-z0-9_.]*\s*\(")
_PARTIAL = re.compile(r"\[\s*(?:[A-Za-z_][A-Za-z0-9_.]*\s*)?")
_JSON_NAMES = {"true": True, "false": False, "null": None}


class _NotLiteral(Exception):
    pass


def _name(node: ast.expr) -> str | None:
    """f or a.b.c (dotted names, as Llama's built-in tools `brave_search.call`)."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _name(node.value)
        return f"{base}.{node.attr}" if base else None
    return None


def _literal(node: ast.expr) -> Any:
    if isinstance(node, ast.Constant):
        v = node.value
        if isinstance(v, bool) or v is None or isinstance(v, (str, int)):
            return v
        if isinstance(v, float) and math.isfinite(v):
            return v
        raise _NotLiteral(type(v).__name__)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        v = _literal(node.operand)
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise _NotLiteral("sign on a non-number")
        return -v if isinstance(node.op, ast.USub) else v
    if isinstance(node, (ast.List, ast.Tuple)):
        return [_literal(e) for e in node.elts]
    if isinstance(node, ast.Dict):
        out = {}
        for k, v in zip(node.keys, node.values):
            key = _literal(k) if k is not None else None
            if not isinstance(key, str):
                raise _NotLiteral("dict keys must be strings")
            out[key] = _literal(v)
        return out
    if isinstance(node, ast.Name) and node.id in _JSON_NAMES:
        return _JSON_NAMES[node.id]
    raise _NotLiteral(type(node).__name__)


def parse_pythonic(text: str) -> list[ParsedCall] | None:
    """`[f(a=1), g()]` -> calls; None when the text is not exactly such a list."""
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None
    if not isinstance(tree.body, ast.List) or not tree.body.elts:
        return None
    calls = []
    for node in tree.body.elts:
        if not isinstance(node, ast.Call) or node.args:
            return None
        name = _name(node.func)
        if name is None:
            return None
        args: dict[str, Any] = {}
        for kw in node.keywords:
            if kw.arg is None or kw.arg in args:  # **kwargs or a repeated name
                return None
            try:
                args[kw.arg] = _literal(kw.value)
            except (_NotLiteral, RecursionError):
                return None
        calls.append(ParsedCall.from_object(name, args))
    return calls


PYTHONIC_FORMAT = CallFormat(starts="[", quotes="'\"", triple=True, separators=" \t\r\n", start=_START,
                             partial=_PARTIAL, parse=parse_pythonic)
