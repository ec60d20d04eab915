"""The official `openai` client (a client we did not write) against a real `amd-llama4 serve --no-ray
--model tiny-scout` process: batched completions, echo + logprobs, chat (streamed and not), structured
outputs (response_format json_schema / json_object, the client's pydantic `parse`) and tool calling
with a named and a `required` tool_choice (streamed and not). Texts and logprobs are compared with the
engine run directly in this process; constrained outputs are validated with jsonschema."""
from __future__ import annotations

import json

import pytest

from .conftest import need

openai = need("openai")
jsonschema = need("jsonschema")
pydantic = need("pydantic")

LP_TOL = 2e-4  # fp32 on CPU: the server's batched steps and this process's threads round differently


@pytest.fixture(scope="module")
def client(served):
    c = openai.OpenAI(base_url=served.url + "/v1", api_key="unused", max_retries=0, timeout=120)
    yield c
    c.close()


def _greedy(max_tokens: int, **kw):
    from amd_llama4 import SamplingParams

    return SamplingParams(temperature=0, max_tokens=max_tokens, **kw)


# ---- completions ---------------------------------------------------------------------------------

def test_batched_completions_equal_direct_greedy(client, served, direct_llm):
    prompts = ["Return the", "Serialize ``obj`` to a JSON", "x", "A generic version of"]
    r = client.completions.create(model=served.model, prompt=prompts, max_tokens=9, temperature=0)
    assert [c.index for c in r.choices] == [0, 1, 2, 3]
    want = [o.outputs[0] for o in direct_llm.generate(prompts, _greedy(9))]
    assert [c.text for c in r.choices] == [w.text for w in want]
    assert [c.finish_reason for c in r.choices] == [w.finish_reason for w in want]
    assert r.usage.completion_tokens == sum(len(w.token_ids) for w in want)
    assert r.usage.prompt_tokens == sum(len(direct_llm.tokenizer.encode(p)) for p in prompts)


def test_echo_logprobs_max_tokens_zero_equal_direct_prompt_logprobs(client, served, direct_llm):
    """What lm-eval and other harnesses use to score text: echo, logprobs, max_tokens=0, a list of prompts."""
    prompts = ["The quick brown fox", "Return a new object replacing specified fields"]
    r = client.completions.create(model=served.model, prompt=prompts, max_tokens=0, echo=True, logprobs=2)
    direct = direct_llm.generate(prompts, _greedy(0, prompt_logprobs=2))
    for c, p, d in zip(r.choices, prompts, direct):
        assert c.text == p and c.finish_reason == "length"
        lp = c.logprobs
        assert len(lp.tokens) == len(d.prompt_token_ids) == len(lp.token_logprobs) == len(lp.top_logprobs)
        assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
        got = lp.token_logprobs[1:]
        want = [e[0].logprob for e in d.prompt_logprobs[1:]]
        assert got == pytest.approx(want, abs=LP_TOL)
        assert all(1 <= len(t) <= 3 for t in lp.top_logprobs[1:])  # top 2 (+ the prompt token's own)
        assert lp.text_offset == sorted(lp.text_offset)
    assert r.usage.completion_tokens == 0


def test_echo_with_generated_tokens(client, served, direct_llm):
    r = client.completions.create(model=served.model, prompt="Return the", max_tokens=4, echo=True, logprobs=0,
                                  temperature=0)
    (c,) = r.choices
    want = direct_llm.generate("Return the", _greedy(4))[0].outputs[0].text
    assert c.text == "Return the" + want
    assert len(c.logprobs.tokens) == len(direct_llm.tokenizer.encode("Return the")) + 4


# ---- chat ----------------------------------------------------------------------------------------

CHAT = [{"role": "user", "content": "What does json.dumps do?"}]


def test_chat_streamed_and_not_equal_direct_greedy(client, served, direct_llm):
    want = direct_llm.chat(CHAT, _greedy(20))[0].outputs[0]
    r = client.chat.completions.create(model=served.model, messages=CHAT, max_tokens=20, temperature=0)
    msg = r.choices[0].message
    assert msg.role == "assistant" and msg.content == want.text and msg.tool_calls is None
    assert r.choices[0].finish_reason == want.finish_reason
    assert r.usage.completion_tokens == len(want.token_ids)

    chunks = list(client.chat.completions.create(model=served.model, messages=CHAT, max_tokens=20, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == want.text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == want.finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == len(want.token_ids)


def test_chat_logprobs(client, served, direct_llm):
    want = direct_llm.chat(CHAT, _greedy(6, logprobs=2))[0].outputs[0]
    r = client.chat.completions.create(model=served.model, messages=CHAT, max_tokens=6, temperature=0,
                                       logprobs=True, top_logprobs=2)
    content = r.choices[0].logprobs.content
    assert len(content) == len(want.token_ids)
    assert [t.logprob for t in content] == pytest.approx([lp.logprob for lp, _ in want.logprobs], abs=LP_TOL)
    assert all(len(t.top_logprobs) == 2 for t in content)


# ---- structured outputs --------------------------------------------------------------------------

SCHEMAS = {
    "person": {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 12},
            "age": {"type": "integer", "minimum": 0, "maximum": 120},
            "tags": {"type": "array", "items": {"type": "string", "enum": ["a", "b", "c"]}, "maxItems": 3},
            "color": {"enum": ["red", "green", "blue"]},
        },
        "required": ["name", "age", "color"],
        "additionalProperties": False,
    },
    "nested": {
        "type": "object",
        "properties": {
            "point": {"type": "object", "properties": {"x": {"type": "integer", "minimum": -5, "maximum": 5},
                                                       "y": {"type": "integer", "minimum": -5, "maximum": 5}},
                      "required": ["x", "y"], "additionalProperties": False},
            "flags": {"type": "array", "items": {"type": "boolean"}, "minItems": 1, "maxItems": 4},
            "kind": {"type": "string", "enum": ["line", "dot"]},
        },
        "required": ["point", "flags", "kind"],
        "additionalProperties": False,
    },
    "list": {"type": "array", "items": {"type": "integer", "minimum": 10, "maximum": 99}, "minItems": 2, "maxItems": 5},
}


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_response_format_json_schema_validates(client, served, name):
    schema = SCHEMAS[name]
    rf = {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}}
    r = client.chat.completions.create(model=served.model, messages=[{"role": "user", "content": "Give me JSON"}],
                                       max_tokens=150, temperature=0, response_format=rf)
    text = r.choices[0].message.content
    jsonschema.validate(json.loads(text), schema)
    assert r.choices[0].finish_reason == "stop"  # the grammar closed the value, not max_tokens

    # sampled (temperature 1, a seed) and streamed: still valid
    chunks = list(client.chat.completions.create(
        model=served.model, messages=[{"role": "user", "content": "Another one"}], max_tokens=150, temperature=1.0,
        seed=7, response_format=rf, stream=True))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    jsonschema.validate(json.loads(streamed), schema)


def _closers(llm, bias: float, tokens: tuple[str, ...] = ('"', ",", "}")) -> dict[str, float]:
    """logit_bias towards '"', ',' and '}': the tiny model, left alone, writes strings and number digits
    until max_tokens (a weak model's failure in any engine: the grammar allows it, finish_reason is then
    "length" and the JSON cut); a nudge lets it close them so the grammar's end can be checked."""
    return {str(llm.tokenizer.token_to_id(t)): bias for t in tokens}


def test_response_format_json_object(client, served, direct_llm):
    for stream in (False, True):
        kw = dict(model=served.model, messages=[{"role": "user", "content": "JSON please"}], max_tokens=60,
                  temperature=0, response_format={"type": "json_object"}, logit_bias=_closers(direct_llm, 6.0, ('"', "}")))
        if stream:
            chunks = list(client.chat.completions.create(stream=True, **kw))
            text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            finish = [c.choices[0].finish_reason for c in chunks if c.choices][-1]
        else:
            r = client.chat.completions.create(**kw)
            text, finish = r.choices[0].message.content, r.choices[0].finish_reason
        assert finish == "stop", text
        assert isinstance(json.loads(text), dict)


def test_response_format_number_bounds(client, served, direct_llm):
    schema = {"type": "object",
              "properties": {"ratio": {"type": "number", "minimum": -1, "maximum": 1},
                             "temp": {"type": "number", "exclusiveMinimum": 0, "maximum": 50},
                             "n": {"type": "integer", "minimum": -3, "maximum": 3}},
              "required": ["ratio", "temp", "n"], "additionalProperties": False}
    rf = {"type": "json_schema", "json_schema": {"name": "nums", "schema": schema, "strict": True}}
    for seed in (None, 1, 2):
        r = client.chat.completions.create(model=served.model, messages=[{"role": "user", "content": "Numbers"}],
                                           max_tokens=60, temperature=0 if seed is None else 1.0, seed=seed,
                                           response_format=rf, logit_bias=_closers(direct_llm, 4.0))
        assert r.choices[0].finish_reason == "stop", r.choices[0].message.content
        jsonschema.validate(json.loads(r.choices[0].message.content), schema)


def test_response_format_on_completions_endpoint(client, served):
    """vLLM's structured_outputs extras through the client's extra_body (regex, choice)."""
    r = client.completions.create(model=served.model, prompt="Pick one:", max_tokens=10, temperature=0,
                                  extra_body={"structured_outputs": {"choice": ["alpha", "beta", "gamma"]}})
    assert r.choices[0].text in ("alpha", "beta", "gamma")
    r = client.completions.create(model=served.model, prompt="A date:", max_tokens=20, temperature=0,
                                  extra_body={"structured_outputs": {"regex": r"20[0-9]{2}-0[1-9]-[12][0-9]"}})
    import re

    assert re.fullmatch(r"20[0-9]{2}-0[1-9]-[12][0-9]", r.choices[0].text), r.choices[0].text


def test_client_parse_with_pydantic_model(client, served):
    """The client's own structured-output helper: it builds a strict json_schema from the model class and
    parses the reply into it."""

    class Step(pydantic.BaseModel):
        action: str = pydantic.Field(max_length=10)
        count: int = pydantic.Field(ge=1, le=9)

    class Plan(pydantic.BaseModel):
        title: str = pydantic.Field(max_length=16)
        steps: list[Step] = pydantic.Field(max_length=3)
        done: bool

    r = client.chat.completions.parse(model=served.model, messages=[{"role": "user", "content": "Plan my day"}],
                                      max_tokens=200, temperature=0, response_format=Plan)
    parsed = r.choices[0].message.parsed
    assert isinstance(parsed, Plan), r.choices[0].message.content
    assert all(1 <= s.count <= 9 for s in parsed.steps)


def test_bad_structured_outputs_are_400_naming_the_field(client, served):
    bad_schema = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nonsense-type"}}}
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=served.model, messages=CHAT, max_tokens=5, response_format=bad_schema)
    assert "response_format" in str(e.value.param or "") + e.value.message
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=served.model, prompt="x", max_tokens=5,
                                  extra_body={"structured_outputs": {"regex": "(unclosed"}})
    assert "structured_outputs" in str(e.value.param or "") + e.value.message


# ---- tool calling --------------------------------------------------------------------------------

TOOLS = [
    {"type": "function", "function": {
        "name": "get_weather", "description": "Current weather in a city",
        "parameters": {"type": "object",
                       "properties": {"city": {"type": "string", "maxLength": 16},
                                      "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                                      "days": {"type": "integer", "minimum": 1, "maximum": 7}},
                       "required": ["city", "unit"], "additionalProperties": False}}},
    {"type": "function", "function": {
        "name": "add", "description": "Add two integers",
        "parameters": {"type": "object",
                       "properties": {"a": {"type": "integer", "minimum": -100, "maximum": 100},
                                      "b": {"type": "integer", "minimum": -100, "maximum": 100}},
                       "required": ["a", "b"], "additionalProperties": False}}},
]
PARAMS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
ASK = [{"role": "user", "content": "What is the weather in Paris, and what is 2 + 3?"}]


def _check_calls(calls: list[tuple[str, str, str]], only: str | None = None) -> None:
    """(id, name, arguments JSON) per call: ids unique, names known, arguments valid for that tool."""
    assert calls, "no tool calls"
    assert len({c[0] for c in calls}) == len(calls) and all(c[0] for c in calls)
    for _, name, args in calls:
        assert name in PARAMS and (only is None or name == only), name
        jsonschema.validate(json.loads(args), PARAMS[name])


def _streamed_calls(chunks) -> tuple[list[tuple[str, str, str]], str | None, str]:
    """Rebuilds the calls from OpenAI-shaped deltas: id, type and name once per call index, then argument
    fragments to concatenate."""
    calls: dict[int, list] = {}
    finish, content = None, ""
    for ch in chunks:
        for c in ch.choices:
            content += c.delta.content or ""
            for tc in c.delta.tool_calls or []:
                if tc.index not in calls:
                    assert tc.id and tc.function.name and tc.type == "function", tc
                    calls[tc.index] = [tc.id, tc.function.name, ""]
                else:
                    assert tc.id is None and tc.function.name is None, tc
                calls[tc.index][2] += tc.function.arguments or ""
            finish = c.finish_reason or finish
    assert sorted(calls) == list(range(len(calls)))
    return [tuple(calls[i]) for i in sorted(calls)], finish, content


@pytest.mark.parametrize("choice", ["named", "required"])
def test_forced_tool_choice_arguments_validate(client, served, choice):
    tool_choice = {"type": "function", "function": {"name": "add"}} if choice == "named" else "required"
    only = "add" if choice == "named" else None
    kw = dict(model=served.model, messages=ASK, tools=TOOLS, tool_choice=tool_choice, max_tokens=200)

    r = client.chat.completions.create(temperature=0, **kw)
    msg = r.choices[0].message
    assert r.choices[0].finish_reason == "tool_calls"
    assert not msg.content
    _check_calls([(c.id, c.function.name, c.function.arguments) for c in msg.tool_calls], only)
    if choice == "named":
        assert len(msg.tool_calls) == 1

    for temperature, seed in ((0, None), (1.0, 3)):
        calls, finish, content = _streamed_calls(client.chat.completions.create(
            temperature=temperature, seed=seed, stream=True, **kw))
        assert finish == "tool_calls" and not content
        _check_calls(calls, only)
        if temperature == 0:  # greedy: the stream carries the same calls as the JSON reply
            assert [(n, json.loads(a)) for _, n, a in calls] == \
                [(c.function.name, json.loads(c.function.arguments)) for c in msg.tool_calls]


def test_tool_round_trip_and_parse_helper(client, served):
    """The client's pydantic_function_tool (strict) + parse(): the arguments come back parsed; then the
    tool result goes back as a `tool` message and the model answers in text (tool_choice none)."""

    class Lookup(pydantic.BaseModel):
        word: str = pydantic.Field(max_length=12)
        limit: int = pydantic.Field(ge=1, le=5)

    tool = openai.pydantic_function_tool(Lookup)
    r = client.chat.completions.parse(model=served.model, messages=[{"role": "user", "content": "Look up 'heap'"}],
                                      tools=[tool], tool_choice={"type": "function", "function": {"name": "Lookup"}},
                                      max_tokens=100, temperature=0)
    (call,) = r.choices[0].message.tool_calls
    assert isinstance(call.function.parsed_arguments, Lookup) and 1 <= call.function.parsed_arguments.limit <= 5

    history = [{"role": "user", "content": "Look up 'heap'"},
               {"role": "assistant", "content": None, "tool_calls": [
                   {"id": call.id, "type": "function",
                    "function": {"name": call.function.name, "arguments": call.function.arguments}}]},
               {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"result": "a priority queue"})}]
    r = client.chat.completions.create(model=served.model, messages=history, tools=[tool], tool_choice="none",
                                       max_tokens=12, temperature=0)
    assert r.choices[0].message.tool_calls is None and r.choices[0].finish_reason in ("stop", "length")


def test_bad_tool_choice_is_400_naming_the_field(client, served):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=served.model, messages=ASK, tools=TOOLS, max_tokens=5,
                                       tool_choice={"type": "function", "function": {"name": "not_a_tool"}})
    assert "tool_choice" in str(e.value.param or "") + e.value.message
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=served.model, messages=ASK, tools=TOOLS, max_tokens=5,
                                       tool_choice="required", response_format={"type": "json_object"})
    assert "tool_choice" in str(e.value.param or "") + e.value.message


# ---- the same guarantees from random weights -----------------------------------------------------

def test_random_weights_forced_tool_choice_and_json_schema(served_random, direct_llm):
    """A random-weight model has no idea what JSON is: the grammar alone must make the output valid."""
    c = openai.OpenAI(base_url=served_random.url + "/v1", api_key="unused", max_retries=0, timeout=120)
    try:
        free = c.chat.completions.create(model=served_random.model, messages=CHAT, max_tokens=12, temperature=0)
        assert free.choices[0].message.content != direct_llm.chat(CHAT, _greedy(12))[0].outputs[0].text  # random
        for tool_choice, only in (({"type": "function", "function": {"name": "get_weather"}}, "get_weather"),
                                  ("required", None)):
            kw = dict(model=served_random.model, messages=ASK, tools=TOOLS, tool_choice=tool_choice, max_tokens=200,
                      temperature=0)
            r = c.chat.completions.create(**kw)
            assert r.choices[0].finish_reason == "tool_calls", r.choices[0].message
            _check_calls([(t.id, t.function.name, t.function.arguments) for t in r.choices[0].message.tool_calls], only)
            calls, finish, _ = _streamed_calls(c.chat.completions.create(stream=True, **kw))
            assert finish == "tool_calls"
            _check_calls(calls, only)
        for name, schema in sorted(SCHEMAS.items()):
            rf = {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}}
            r = c.chat.completions.create(model=served_random.model, messages=[{"role": "user", "content": "JSON"}],
                                          max_tokens=150, temperature=0, response_format=rf)
            assert r.choices[0].finish_reason == "stop", r.choices[0].message.content
            jsonschema.validate(json.loads(r.choices[0].message.content), schema)
    finally:
        c.close()
