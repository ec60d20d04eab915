"""`--tool-call-parser` choices (vLLM's names): how `tool_choice: auto` output becomes tool_calls."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from amd_llama4.serve.tools.calls import ParsedCall
from amd_llama4.serve.tools.json_calls import JSON_FORMAT
from amd_llama4.serve.tools.pythonic import PYTHONIC_FORMAT
from amd_llama4.serve.tools.streaming import CallFormat, CallStream, extract


@dataclass(frozen=True)
class ToolParser:
    name: str
    fmt: CallFormat

    def extract(self, text: str, tool_names: set[str] | None = None) -> tuple[str | None, list[ParsedCall]]:
        """Whole output -> (content, calls); calls only to `tool_names` when given (an unknown name
        leaves the text as content)."""
        return extract(self.fmt, text, tool_names)

    def stream(self, tool_names: set[str] | None = None) -> CallStream:
        return CallStream(self.fmt, tool_names)


TOOL_PARSERS: dict[str, ToolParser] = {
    "llama4_pythonic": ToolParser("llama4_pythonic", PYTHONIC_FORMAT),
    "llama4_json": ToolParser("llama4_json", JSON_FORMAT),
}


def get_parser(name: str) -> ToolParser:
    try:
        return TOOL_PARSERS[name]
    except KeyError:
        raise ValueError(f"tool_call_parser: {name!r} is not one of {sorted(TOOL_PARSERS)}") from None


def check_tool_options(tool_call_parser: Any, enable_auto_tool_choice: bool) -> None:
    """Server start-up check (as vLLM's): auto tool choice needs a parser; the parser must exist."""
    if tool_call_parser is not None:
        get_parser(str(tool_call_parser))
    if enable_auto_tool_choice and tool_call_parser is None:
        raise ValueError("enable_auto_tool_choice needs tool_call_parser (--tool-call-parser "
                         f"{'|'.join(sorted(TOOL_PARSERS))})")
