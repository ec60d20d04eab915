"""Structured outputs (JSON schema, regex, choice, grammar) through llguidance; see backend.py for
why that library. params: the request's constraint; backend: tokenizer bridge, compile cache, one
matcher per sequence; bitmask: the batch's allowed-token mask, applied on the logits' device."""
from amd_llama4.structured.params import StructuredOutputsParams

__all__ = ["StructuredOutputsParams"]
