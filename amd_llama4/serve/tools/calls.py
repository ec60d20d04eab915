"""A parsed tool call and its OpenAI shapes (message.tool_calls entries and streamed deltas)."""
from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import Any


def new_tool_call_id() -> str:
    """vLLM's id format, so clients that echo ids back see the familiar shape."""
    return f"chatcmpl-tool-{uuid.uuid4().hex}"


def dumps(obj: Any) -> str:
    # ensure_ascii=False: arguments keep their text as the model wrote it; allow_nan=False: NaN is not JSON.
    return json.dumps(obj, ensure_ascii=False, allow_nan=False)


@dataclass
class ParsedCall:
    """One call the model made. `arguments` is the JSON object text sent to the client: the exact
    model text for a named tool_choice (as streamed), else the parsed object re-serialised."""
    name: str
    arguments: str
    id: str = field(default_factory=new_tool_call_id)

    @classmethod
    def from_object(cls, name: str, args: dict[str, Any]) -> "ParsedCall":
        return cls(name, dumps(args))

    def to_openai(self) -> dict[str, Any]:
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}


def header_delta(index: int, call: ParsedCall) -> dict[str, Any]:
    """The first streamed piece of a call: id, type and name, empty arguments (OpenAI's shape)."""
    return {"index": index, "id": call.id, "type": "function", "function": {"name": call.name, "arguments": ""}}


def arguments_delta(index: int, text: str) -> dict[str, Any]:
    return {"index": index, "function": {"arguments": text}}


def argument_pieces(arguments: str) -> list[str]:
    """The arguments JSON text cut after each top-level member (`{"a": 1`, `, "b": 2`, `}`), so a
    client sees them arrive piece by piece; the pieces concatenate to `arguments` exactly."""
    try:
        obj = json.loads(arguments)
    except ValueError:
        return [arguments]
    if not isinstance(obj, dict) or not obj or dumps(obj) != arguments:
        return [arguments]
    pieces = [("{" if i == 0 else ", ") + dumps(k) + ": " + dumps(v) for i, (k, v) in enumerate(obj.items())]
    return pieces + ["}"]


def call_deltas(index: int, call: ParsedCall) -> list[dict[str, Any]]:
    """A whole call as stream deltas: the header, then the argument pieces."""
    return [{"tool_calls": [header_delta(index, call)]}] + [
        {"tool_calls": [arguments_delta(index, p)]} for p in argument_pieces(call.arguments)]
