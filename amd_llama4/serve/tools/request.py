"""What a chat request's tools and tool_choice mean for one request: the mode, the template's tool
list, the forced-choice grammar and the stream parser per choice (serve/protocol.py and
serve/handlers_chat.py use these)."""
from __future__ import annotations

from typing import Any

from amd_llama4.serve.tools.choice import NamedCallStream, named_schema, required_schema, required_stream
from amd_llama4.serve.tools.models import ChatTool, NamedToolChoice
from amd_llama4.serve.tools.parsers import ToolParser, get_parser

# tool_choice as the server runs it
NONE, AUTO, REQUIRED, NAMED = "none", "auto", "required", "named"


TOOL_CHOICE_FORMS = "must be 'none', 'auto', 'required' or {'type': 'function', 'function': {'name': NAME}}"


def check_tools(tools: list[ChatTool] | None) -> list[ChatTool] | None:
    names = [t.function.name for t in tools or []]
    dup = next((n for n in names if names.count(n) > 1), None)
    if dup is not None:
        raise ValueError(f"two tools are named {dup!r}")
    return tools


def check_tool_choice(choice: Any, tools: list[ChatTool] | None) -> Any:
    """Everything but none needs tools (as OpenAI); a named function must be one of them."""
    if choice not in (None, NONE) and not tools:
        what = f"function {choice.function.name!r}" if isinstance(choice, NamedToolChoice) else repr(choice)
        raise ValueError(f"{what} needs tools (none were given)")
    if isinstance(choice, NamedToolChoice) and choice.function.name not in {t.function.name for t in tools or []}:
        raise ValueError(f"function {choice.function.name!r} is not one of the tools")
    return choice


def tool_mode(tools: list[ChatTool] | None, tool_choice: Any) -> str:
    """OpenAI's default: auto when tools are given, none without."""
    if not tools or tool_choice == NONE:
        return NONE
    if isinstance(tool_choice, NamedToolChoice):
        return NAMED
    return REQUIRED if tool_choice == REQUIRED else AUTO


def tool_dicts(tools: list[ChatTool] | None) -> list[dict[str, Any]] | None:
    """The tools as the chat template receives them (OpenAI's dicts, unset fields left out)."""
    return [t.model_dump(exclude_none=True) for t in tools] if tools else None


def forced_schema(tools: list[ChatTool], tool_choice: Any, parallel_tool_calls: bool | None) -> dict[str, Any]:
    """The JSON schema the output must match for `required` or a named function."""
    dicts = tool_dicts(tools) or []
    if isinstance(tool_choice, NamedToolChoice):
        tool = next(t for t in dicts if t["function"]["name"] == tool_choice.function.name)
        return named_schema(tool)
    return required_schema(dicts, parallel_tool_calls is not False)


class ToolOutput:
    """How one request's outputs become content + tool_calls: `stream()` gives each choice's
    incremental parser (None: plain text), `finish_reason` maps the engine's reason."""

    def __init__(self, mode: str, tools: list[ChatTool] | None, tool_choice: Any,
                 parser_name: str | None) -> None:
        self.mode = mode
        self.names = {t.function.name for t in tools or []}
        self.named = tool_choice.function.name if isinstance(tool_choice, NamedToolChoice) else None
        self.parser: ToolParser | None = get_parser(parser_name) if mode == AUTO and parser_name else None

    def stream(self) -> Any:
        if self.mode == NAMED:
            return NamedCallStream(self.named or "")
        if self.mode == REQUIRED:
            return required_stream(self.names)
        if self.parser is not None:
            return self.parser.stream(self.names)
        return None

    def message(self, text: str) -> tuple[str | None, list[dict[str, Any]]]:
        """A whole choice's text -> (content, OpenAI tool_calls)."""
        s = self.stream()
        if s is None:
            return text, []
        deltas = s.feed(text, final=True)
        if not s.calls:
            return text, []
        content = "".join(d["content"] for d in deltas if "content" in d)
        return (content if content.strip() else None), [c.to_openai() for c in s.calls]

    @staticmethod
    def finish_reason(engine_reason: str | None, called: bool) -> str | None:
        """"tool_calls" when the model stopped after making calls (not when cut off by length)."""
        return "tool_calls" if called and engine_reason == "stop" else engine_reason
