"""Llama 4's JSON call format: `{"name": "f", "parameters": {...}}`, one object, several separated
by `;`, or a list of them. `arguments` is accepted in place of `parameters` (OpenAI's spelling),
and parameters given as a JSON string holding an object are unwrapped."""
from __future__ import annotations

import json
import re
from typing import Any

from amd_llama4.serve.tools.calls import ParsedCall
from amd_llama4.serve.tools.streaming import CallFormat

_START = re.compile(r"(?:\[\s*)?\{\s*\"")
_PARTIAL = re.compile(r"\[\s*(?:\{\s*)?|\{\s*")


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _call(obj: Any) -> ParsedCall | None:
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str) or not obj["name"]:
        return None
    params = obj.get("parameters", obj.get("arguments", {}))
    if isinstance(params, str):
        try:
            params = json.loads(params, parse_constant=_no_constants)
        except ValueError:
            return None
    if not isinstance(params, dict):
        return None
    return ParsedCall.from_object(obj["name"], params)


def parse_json_calls(text: str) -> list[ParsedCall] | None:
    """One call object or a non-empty list of them -> calls; None for anything else."""
    try:
        obj = json.loads(text, parse_constant=_no_constants)
    except (ValueError, RecursionError):
        return None
    items = obj if isinstance(obj, list) else [obj]
    calls = [_call(o) for o in items]
    if not calls or any(c is None for c in calls):
        return None
    return calls  # type: ignore[return-value]


JSON_FORMAT = CallFormat(starts="[{", quotes='"', triple=False, separators=" \t\r\n;", start=_START, partial=_PARTIAL,
                         parse=parse_json_calls)
