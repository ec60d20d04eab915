"""Request and response models of tool calling (OpenAI's shapes), used by serve/protocol.py."""
from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

TOOL_NAME_PATTERN = r"^[a-zA-Z0-9_-]{1,64}$"  # OpenAI's rule for function names
MAX_TOOLS = 128  # OpenAI's limit


class _In(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


def check_json_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """A JSON schema (any draft jsonschema knows; 2020-12 when `$schema` is absent) or ValueError."""
    import jsonschema

    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    try:
        cls.check_schema(schema)
    except jsonschema.SchemaError as e:
        where = "/".join(str(p) for p in e.absolute_path)
        raise ValueError(f"not a valid JSON schema{f' at {where}' if where else ''}: {e.message[:300]}") from None
    return schema


class FunctionDefinition(_In):
    name: str = Field(..., pattern=TOOL_NAME_PATTERN)
    description: str | None = None
    parameters: dict[str, Any] | None = Field(None, description="a JSON schema of the arguments object")
    strict: bool | None = None

    @field_validator("parameters")
    @classmethod
    def _check_parameters(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        return None if v is None else check_json_schema(v)


class ChatTool(_In):
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(_In):
    name: str = Field(..., pattern=TOOL_NAME_PATTERN)


class NamedToolChoice(_In):
    type: Literal["function"]
    function: NamedFunction


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice


class FunctionCallIn(_In):
    name: str = Field(..., max_length=256)
    arguments: str = Field(..., description="the arguments as JSON text (an object)")

    @field_validator("arguments")
    @classmethod
    def _check_arguments(cls, v: str) -> str:
        try:
            obj = json.loads(v) if v.strip() else {}
        except ValueError as e:
            raise ValueError(f"not valid JSON ({e})") from None
        if not isinstance(obj, dict):
            raise ValueError("must be a JSON object")
        return v


class ToolCallIn(_In):
    """An earlier assistant turn's call, sent back in `messages`."""
    id: str | None = Field(None, max_length=256)
    type: Literal["function"] = "function"
    function: FunctionCallIn


class FunctionCall(_Out):
    name: str
    arguments: str


class ToolCall(_Out):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class DeltaFunctionCall(_Out):
    name: str | None = None
    arguments: str | None = None


class DeltaToolCall(_Out):
    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: DeltaFunctionCall | None = None
