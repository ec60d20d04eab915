"""Tool-call parsers (pure Python, no model): Llama 4's pythonic list and JSON forms, whole outputs
and streamed ones. Includes the failures other servers' parsers are known for: several calls, nested
and quoted arguments (brackets, commas and quotes inside strings), text around a call, unicode,
empty arguments, and malformed calls, which must come back as content (never lost)."""
from __future__ import annotations

import json
import random

import pytest

from amd_llama4.serve.tools import TOOL_PARSERS, get_parser
from amd_llama4.serve.tools.calls import argument_pieces
from amd_llama4.serve.tools.choice import NamedCallStream, required_schema

PY, JS = TOOL_PARSERS["llama4_pythonic"], TOOL_PARSERS["llama4_json"]


def _calls(calls):
    return [(c.name, json.loads(c.arguments)) for c in calls]


@pytest.mark.parametrize("text, content, expected", [
    ('[get_weather(city="Paris")]', None, [("get_weather", {"city": "Paris"})]),
    ('[f(a=1, b="x"), g(c=[1, {"d": 2}])]', None, [("f", {"a": 1, "b": "x"}), ("g", {"c": [1, {"d": 2}]})]),
    # quotes, brackets and commas inside strings; both quote kinds; escapes; triple quotes
    ('[f(s="a, b], c)", t=\'it\\\'s\', u="say \\"hi\\"", v="""x]y""")]', None,
     [("f", {"s": "a, b], c)", "t": "it's", "u": 'say "hi"', "v": "x]y"})]),
    ('[f(d={"k": [1, 2, {"z": None}]}, n=-3, x=2.5e3, b=True, t=(1, 2))]', None,
     [("f", {"d": {"k": [1, 2, {"z": None}]}, "n": -3, "x": 2500.0, "b": True, "t": [1, 2]})]),
    ('[f(a=true, b=false, c=null)]', None, [("f", {"a": True, "b": False, "c": None})]),  # JSON literals
    ('[f()]', None, [("f", {})]),  # empty arguments
    ('[wetter(stadt="München", note="天气 ☀️")]', None, [("wetter", {"stadt": "München", "note": "天气 ☀️"})]),
    ('<|python_start|>[f(a=1)]<|python_end|>', None, [("f", {"a": 1})]),
    ('Let me check. [f(a=1)]', "Let me check.", [("f", {"a": 1})]),
    ('[f(a=1)]\nDone, see above.', "Done, see above.", [("f", {"a": 1})]),
    ('Before [f(a=1)] after', "Before after", [("f", {"a": 1})]),
    ('  \n[f(a=1)]  \n', None, [("f", {"a": 1})]),
    ('[brave_search.call(query="x")]', None, [("brave_search.call", {"query": "x"})]),
])
def test_pythonic_calls(text, content, expected):
    got_content, calls = PY.extract(text)
    assert got_content == content
    assert _calls(calls) == expected
    assert all(c.id.startswith("chatcmpl-tool-") and len(c.id) > 20 for c in calls)
    assert len({c.id for c in calls}) == len(calls)


@pytest.mark.parametrize("text", [
    "Plain answer, no calls.",
    "A list [1, 2, 3] and a link [docs](http://x) and f(a=1) bare.",
    "[f(x)]",                      # positional argument
    "[f(a=x)]",                    # a variable: nothing is evaluated
    "[f(a=open('/etc/passwd'))]",  # a call inside a call
    "[f(a=1 + 2)]",                # an expression
    "[f(a=1, a=2)]",               # a repeated keyword
    "[f(**kw)]",
    "[f(a=1), ",                   # cut off (max_tokens)
    '[f(a="unterminated)]',
    "[f(a=1)] ]] ((",              # stray closers after a call are content, the call still counts
    "[]",
    "[f(a={1: 2})]",               # non-string dict key
    "[f(a=float('nan'))]",
    "",
])
def test_pythonic_malformed_is_content_never_lost(text):
    content, calls = PY.extract(text)
    if calls:  # only the last case: the call is parsed and the rest kept
        assert text == "[f(a=1)] ]] ((" and content == "]] ((" and _calls(calls) == [("f", {"a": 1})]
    else:
        assert content == text  # exactly the model's text


def test_pythonic_unknown_tool_name_stays_content():
    content, calls = PY.extract('[rm_rf(path="/")]', tool_names={"get_weather"})
    assert calls == [] and content == '[rm_rf(path="/")]'
    content, calls = PY.extract('[get_weather(city="x"), rm_rf(path="/")]', tool_names={"get_weather"})
    assert calls == [] and content.startswith("[get_weather")  # all or nothing per list


def test_malformed_then_valid_call():
    content, calls = PY.extract('[f(x)] then [g(y=2)]')
    assert content == "[f(x)] then" and _calls(calls) == [("g", {"y": 2})]


@pytest.mark.parametrize("text, content, expected", [
    ('{"name": "f", "parameters": {"a": 1}}', None, [("f", {"a": 1})]),
    ('{"name": "f", "parameters": {"a": 1}}; {"name": "g", "parameters": {}}', None,
     [("f", {"a": 1}), ("g", {})]),
    ('[{"name": "f", "parameters": {"s": "a}, {b"}}, {"name": "g", "arguments": {"x": [1, {"y": "]"}]}}]', None,
     [("f", {"s": "a}, {b"}), ("g", {"x": [1, {"y": "]"}]})]),
    ('{"name": "f", "parameters": "{\\"a\\": 2}"}', None, [("f", {"a": 2})]),  # stringified parameters
    ('{"name": "f"}', None, [("f", {})]),
    ('Sure: {"name": "météo", "parameters": {"ville": "Zürich"}} done', "Sure: done",
     [("météo", {"ville": "Zürich"})]),
    ('<|python_start|>{"name": "f", "parameters": {}}<|python_end|>', None, [("f", {})]),
])
def test_json_calls(text, content, expected):
    got_content, calls = JS.extract(text)
    assert got_content == content and _calls(calls) == expected


@pytest.mark.parametrize("text", [
    '{"answer": 42}', '{"name": 3, "parameters": {}}', '{"name": "f", "parameters": [1]}',
    '{"name": "f", "parameters": {"a": NaN}}', '{"name": "f", "parameters": {', "[1, 2]",
    '[{"name": "f", "parameters": {}}, {"oops": 1}]', "{'name': 'f'}",
])
def test_json_malformed_is_content(text):
    assert JS.extract(text) == (text, [])


def _stream(parser, text, chunks, tool_names=None):
    s = parser.stream(tool_names)
    deltas = []
    for piece in chunks:
        deltas += s.feed(piece)
    deltas += s.feed("", final=True)
    return deltas


def _collect(deltas):
    content, calls = "", {}
    for d in deltas:
        assert set(d) in ({"content"}, {"tool_calls"}), d
        if "content" in d:
            content += d["content"]
            continue
        (tc,) = d["tool_calls"]
        call = calls.setdefault(tc["index"], {"id": None, "name": None, "arguments": ""})
        if "id" in tc:
            assert call["id"] is None and tc["type"] == "function" and tc["function"]["arguments"] == ""
            call["id"], call["name"] = tc["id"], tc["function"]["name"]
        else:
            assert set(tc) == {"index", "function"} and set(tc["function"]) == {"arguments"}
            call["arguments"] += tc["function"]["arguments"]
    return content, [calls[i] for i in sorted(calls)]


def _splits(text, rng):
    cuts = sorted(rng.sample(range(1, len(text)), min(len(text) - 1, rng.randrange(0, 12)))) if len(text) > 1 else []
    return [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)])]


STREAM_CASES = [
    (PY, 'Hi [f(a=1, b="q], (x"), g(c=[1, {"d": "e"}])] bye'),
    (PY, "[f(x)] not a call"),
    (PY, "A list [1, 2] and [f(a='it\\'s')]"),
    (PY, "<|python_start|>[f(a=1)]<|python_end|>"),
    (PY, "[f(a=1), g(b="),
    (PY, "Plain text with trailing space   "),
    (PY, '[wetter(stadt="München")]\n\nDanke'),
    (JS, '{"name": "f", "parameters": {"a": "}"}}; {"name": "g", "parameters": {"b": [1]}}'),
    (JS, 'x {"answer": 1} y'),
    (JS, '[{"name": "f", "parameters": {}}]'),
]


@pytest.mark.parametrize("parser, text", STREAM_CASES)
def test_streaming_matches_whole_output_for_any_split(parser, text):
    rng = random.Random(hash(text) & 0xFFFF)
    content, calls = parser.extract(text)
    for trial in range(25):
        chunks = list(text) if trial == 0 else _splits(text, rng)
        s_content, s_calls = _collect(_stream(parser, text, chunks))
        assert s_content == (content or "" if calls else text), chunks
        assert [(c["name"], c["arguments"]) for c in s_calls] == [(c.name, c.arguments) for c in calls], chunks
        for c in s_calls:
            json.loads(c["arguments"])  # the streamed pieces concatenate to JSON


def test_streaming_never_leaks_call_text_and_releases_held_text():
    s = PY.stream()
    out = []
    for ch in 'Hi [get_weather(city="Paris")]':
        out += s.feed(ch)
    content = "".join(d.get("content", "") for d in out)
    assert content == "Hi" and "[" not in content
    assert any("tool_calls" in d for d in out)  # emitted as soon as the list closed, before the end
    s = PY.stream()
    held = s.feed("see [get_weather(")
    assert "".join(d.get("content", "") for d in held) == "see"  # the possible call is held back
    released = s.feed("x)] now")  # positional argument: not a call after all
    released += s.feed("", final=True)
    assert "".join(d.get("content", "") for d in held + released) == "see [get_weather(x)] now"


def test_argument_pieces_concatenate():
    for args in ['{"a": 1, "b": "x, y", "c": {"d": [1, 2]}}', "{}", '{"k": "é"}']:
        pieces = argument_pieces(args)
        assert "".join(pieces) == args
    assert len(argument_pieces('{"a": 1, "b": 2}')) == 3


def test_named_stream_is_the_arguments_text():
    s = NamedCallStream("f")
    deltas = s.feed('{"a"') + s.feed(': 1}') + s.feed("", final=True)
    _, calls = _collect(deltas)
    assert calls[0]["name"] == "f" and calls[0]["arguments"] == '{"a": 1}' == s.calls[0].arguments


def test_required_schema_shape():
    tools = [{"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"x": {"$ref": "#/$defs/X"}}, "$defs": {"X": {"type": "integer"}}}}},
        {"type": "function", "function": {"name": "g"}}]
    schema = required_schema(tools)
    assert schema["type"] == "array" and schema["minItems"] == 1 and "maxItems" not in schema
    assert schema["$defs"] == {"X": {"type": "integer"}}  # hoisted so the reference resolves
    names = [b["properties"]["name"]["enum"] for b in schema["items"]["anyOf"]]
    assert names == [["f"], ["g"]]
    assert required_schema(tools, parallel_tool_calls=False)["maxItems"] == 1
    assert tools[0]["function"]["parameters"]["$defs"]  # the request's tools are not modified
    import jsonschema

    jsonschema.validate([{"name": "f", "parameters": {"x": 3}}, {"name": "g", "parameters": {}}], schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate([{"name": "f", "parameters": {"x": "3"}}], schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate([], schema)


def test_unknown_parser_name():
    with pytest.raises(ValueError, match="tool_call_parser"):
        get_parser("hermes")
