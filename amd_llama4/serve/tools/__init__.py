"""Tool calling for the chat API: the Llama 4 call formats (pythonic list, JSON), their streaming
parser, and the JSON schema that enforces a forced tool_choice."""
from amd_llama4.serve.tools.calls import ParsedCall, new_tool_call_id
from amd_llama4.serve.tools.parsers import TOOL_PARSERS, ToolParser, check_tool_options, get_parser

__all__ = ["TOOL_PARSERS", "ParsedCall", "ToolParser", "check_tool_options", "get_parser", "new_tool_call_id"]
