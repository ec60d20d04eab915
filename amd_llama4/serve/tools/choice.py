"""A forced tool_choice (`required` or a named function), enforced by the grammar as vLLM does:
the model must write JSON, which is turned into tool_calls here.

- named function: the arguments object itself, valid against that tool's `parameters`;
- `required`: a JSON array (at least one item; one at most with parallel_tool_calls=false) of
  `{"name": <one tool's name>, "parameters": <that tool's schema>}`, one anyOf branch per tool.

Tool schemas' `$defs` are hoisted to the root so their `#/$defs/...` references still resolve."""
from __future__ import annotations

import copy
from typing import Any

from amd_llama4.serve.tools.calls import ParsedCall, arguments_delta, header_delta
from amd_llama4.serve.tools.json_calls import JSON_FORMAT
from amd_llama4.serve.tools.streaming import CallStream

EMPTY_PARAMETERS: dict[str, Any] = {"type": "object", "properties": {}}


def parameters_of(tool: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI tool dict's parameter schema (an absent one: any object, as OpenAI reads it)."""
    return copy.deepcopy(tool["function"].get("parameters") or EMPTY_PARAMETERS)


def _hoist_defs(schema: dict[str, Any], defs: dict[str, Any], where: str) -> dict[str, Any]:
    for name, sub in (schema.pop("$defs", None) or {}).items():
        if name in defs and defs[name] != sub:
            raise ValueError(f"{where}: $defs entry {name!r} differs from another tool's; rename one")
        defs[name] = sub
    return schema


def named_schema(tool: dict[str, Any]) -> dict[str, Any]:
    return parameters_of(tool)


def required_schema(tools: list[dict[str, Any]], parallel_tool_calls: bool = True) -> dict[str, Any]:
    defs: dict[str, Any] = {}
    branches = []
    for i, tool in enumerate(tools):
        params = _hoist_defs(parameters_of(tool), defs, f"tools[{i}].function.parameters")
        branches.append({"properties": {"name": {"type": "string", "enum": [tool["function"]["name"]]},
                                        "parameters": params},
                         "required": ["name", "parameters"], "additionalProperties": False})
    schema: dict[str, Any] = {"type": "array", "minItems": 1,
                              "items": {"type": "object", "anyOf": branches}}
    if not parallel_tool_calls:
        schema["maxItems"] = 1
    if defs:
        schema["$defs"] = defs
    return schema


class NamedCallStream:
    """Output of a named tool_choice: all of it is the one call's arguments, streamed as it comes
    (the header first). `calls` holds the call with the exact text generated."""

    def __init__(self, name: str) -> None:
        self.call = ParsedCall(name, "")
        self.calls = [self.call]
        self._started = False

    def feed(self, text: str, final: bool = False) -> list[dict[str, Any]]:
        out = []
        if not self._started:
            self._started = True
            out.append({"tool_calls": [header_delta(0, self.call)]})
        if text:
            self.call.arguments += text
            out.append({"tool_calls": [arguments_delta(0, text)]})
        return out


def required_stream(tool_names: set[str]) -> CallStream:
    """Output of `required`: the JSON array parsed by the JSON call format; anything that does not
    parse (a cut-off array) comes back as content."""
    return CallStream(JSON_FORMAT, tool_names)
