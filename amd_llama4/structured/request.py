"""The API's structured-output fields (pydantic, for serve/protocol.py) and their mapping to
StructuredOutputsParams.

OpenAI: `response_format: {"type": "text" | "json_object" | "json_schema", "json_schema": {"name",
"description", "schema", "strict"}}`. vLLM: `structured_outputs: {"json" | "regex" | "choice" |
"grammar" | "json_object"}` (exactly one). strict=true enforces the schema exactly and refuses
keywords the grammar library does not implement (400); otherwise those keywords are ignored
(llguidance's lenient mode), as a best effort like OpenAI's non-strict mode.
"""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from amd_llama4.structured.params import MAX_CHOICES, StructuredOutputsParams


class StructuredOutputsError(ValueError):
    """A bad structured-output field; `param` is its dotted name in the request body."""

    def __init__(self, message: str, param: str):
        super().__init__(message)
        self.param = param


class JsonSchemaFormat(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True, populate_by_name=True)

    name: str = Field(..., min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    description: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema", description="the JSON schema the output follows")
    strict: bool | None = None


class ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _check(self):
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("json_schema is required when type is 'json_schema'")
        return self


class StructuredOutputsRequest(BaseModel):
    """vLLM's `structured_outputs` request field (exactly one member set)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    json_: dict[str, Any] | str | None = Field(None, alias="json", description="a JSON schema (object or text)")
    regex: str | None = Field(None, min_length=1)
    choice: list[str] | None = Field(None, min_length=1, max_length=MAX_CHOICES)
    grammar: str | None = Field(None, min_length=1, description="llguidance Lark grammar (GBNF accepted)")
    json_object: bool | None = None

    @model_validator(mode="after")
    def _one(self):
        set_ = [k for k, v in (("json", self.json_), ("regex", self.regex), ("choice", self.choice),
                               ("grammar", self.grammar), ("json_object", self.json_object or None)) if v is not None]
        if len(set_) != 1:
            raise ValueError("exactly one of json, regex, choice, grammar, json_object must be set, got "
                             f"{set_ or 'none'}")
        return self


def request_constraint(response_format: ResponseFormat | None,
                       structured_outputs: StructuredOutputsRequest | None) -> StructuredOutputsParams | None:
    """-> the request's constraint (None: free text). Raises StructuredOutputsError naming the field."""
    fmt = response_format.type if response_format is not None else "text"
    if structured_outputs is not None and fmt != "text":
        raise StructuredOutputsError("structured_outputs: give it or response_format, not both",
                                     "structured_outputs")
    if structured_outputs is not None:
        so = structured_outputs
        kind = next(k for k, v in (("json", so.json_), ("regex", so.regex), ("choice", so.choice),
                                   ("grammar", so.grammar), ("json_object", so.json_object or None)) if v is not None)
        try:
            return StructuredOutputsParams(**{kind: so.json_ if kind == "json" else getattr(so, kind)})
        except ValueError as e:
            raise StructuredOutputsError(str(e), f"structured_outputs.{kind}") from None
    if fmt == "json_object":
        return StructuredOutputsParams(json_object=True)
    if fmt == "json_schema":
        js = response_format.json_schema
        schema = js.schema_ if js.schema_ is not None else {}  # no schema: any JSON value (OpenAI's reading)
        if not js.strict:
            xg = schema.get("x-guidance")
            schema = {**schema, "x-guidance": {**(xg if isinstance(xg, dict) else {}), "lenient": True}}
        try:
            return StructuredOutputsParams(json=schema)
        except ValueError as e:
            msg = str(e).replace("structured_outputs.json", "response_format.json_schema.schema", 1)
            raise StructuredOutputsError(msg, "response_format.json_schema.schema") from None
    return None
