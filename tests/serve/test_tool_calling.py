"""Tool calling through /v1/chat/completions. Fake engine (scripted model text): tool_choice auto with
both parsers, streamed and not, none, n > 1, history with calls and results, and every bad value (400
naming the field). Real engine (tiny-scout with random weights, through the official openai client):
named and required tool_choice are enforced by the grammar, so the calls' arguments validate against
the tool schemas, streamed and not."""
from __future__ import annotations

import json

import pytest
from serve_utils import LiveServer, asgi_client, need, parse_sse, run

from fake_engine import FakeEngine, FakeTokenizer

httpx = need("httpx")
openai = need("openai")
jsonschema = need("jsonschema")

from amd_llama4.serve.app import build_app  # noqa: E402

CHAT = "/v1/chat/completions"
EOS = 2  # the fake tokenizer's EOS id: each scripted reply ends with it (stop_token_ids)

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string", "maxLength": 12},
        "unit": {"type": "string", "enum": ["C", "F"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 7}},
        "required": ["city", "unit", "days"], "additionalProperties": False}}}
ADD = {"type": "function", "function": {
    "name": "add", "parameters": {"type": "object", "properties": {
        "a": {"type": "integer", "minimum": -100, "maximum": 100},
        "b": {"type": "array", "items": {"type": "boolean"}, "maxItems": 3},
        "mode": {"type": "string", "enum": ["fast", "exact"]}},
        "required": ["a", "b", "mode"], "additionalProperties": False}}}
TOOLS = [WEATHER, ADD]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}


class ToolTokenizer(FakeTokenizer):
    """The fake tokenizer, also taking `tools`; remembers what the template was given."""

    def apply_chat_template(self, messages, add_generation_prompt=True, tokenize=False, tools=None):
        self.seen = {"messages": messages, "tools": tools}
        flat = [{**m, "content": m["content"] + json.dumps(m.get("tool_calls", ""))} for m in messages]
        return super().apply_chat_template(flat, add_generation_prompt, tokenize)


def scripted_app(reply: str, **app_kwargs):
    """The app over a fake engine whose every sample writes `reply`, then EOS."""
    engines = []

    def factory():
        e = FakeEngine(step_delay_s=0.0, tokens_per_step=3, max_model_len=4096)
        e.tokenizer = ToolTokenizer()
        e.reply_ids = e.tokenizer.encode(reply, add_bos=False) + [EOS]
        engines.append(e)
        return e

    return build_app(factory, **app_kwargs), engines


AUTO = dict(tool_call_parser="llama4_pythonic", enable_auto_tool_choice=True)


def post(app, body, status=200):
    async def go():
        async with asgi_client(app) as c:
            return await c.post(CHAT, json=body)

    r = run(go())
    assert r.status_code == status, r.text
    return r


def body(**kw):
    return {"messages": [{"role": "user", "content": "weather?"}], "tools": TOOLS, "stop_token_ids": [EOS],
            "max_tokens": 200, **kw}


def assemble(events):
    """Streamed chunks -> {choice index: (content, [(id, name, arguments)], finish_reason)}."""
    out: dict[int, dict] = {}
    for e in events:
        if e == "[DONE]":
            continue
        for ch in e["choices"]:
            acc = out.setdefault(ch["index"], {"content": "", "calls": {}, "finish": None})
            d = ch["delta"]
            acc["content"] += d.get("content") or ""
            for tc in d.get("tool_calls") or []:
                call = acc["calls"].setdefault(tc["index"], ["", "", ""])
                if tc.get("id"):
                    assert tc["type"] == "function" and not call[0]
                    call[0], call[1] = tc["id"], tc["function"]["name"]
                call[2] += tc["function"].get("arguments") or ""
            acc["finish"] = ch["finish_reason"] or acc["finish"]
    return {i: (a["content"], [tuple(a["calls"][k]) for k in sorted(a["calls"])], a["finish"]) for i, a in out.items()}


# ---- tool_choice auto: the parser over the model's text ------------------------------------------

# ASCII: the fake engine streams bytes and may cut a multi-byte character (unicode: test_tool_parsers)
PY_REPLY = 'Checking. [get_weather(city="Zurich, CH", unit="C", days=2), add(a=1, b=[true], mode="fast")]'
PY_CALLS = [("get_weather", {"city": "Zurich, CH", "unit": "C", "days": 2}),
            ("add", {"a": 1, "b": [True], "mode": "fast"})]


def test_auto_pythonic_non_streamed():
    app, engines = scripted_app(PY_REPLY, **AUTO)
    out = post(app, body()).json()
    (choice,) = out["choices"]
    msg = choice["message"]
    assert choice["finish_reason"] == "tool_calls" and msg["content"] == "Checking."
    assert [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in msg["tool_calls"]] == PY_CALLS
    assert all(c["id"].startswith("chatcmpl-tool-") and c["type"] == "function" for c in msg["tool_calls"])
    assert engines[-1].tokenizer.seen["tools"] == TOOLS  # the template lists the tools


def test_auto_pythonic_streamed_n2():
    app, _ = scripted_app(PY_REPLY, **AUTO)
    events = parse_sse(post(app, body(stream=True, n=2)).text)
    got = assemble(events)
    # sample i starts i bytes into the reply (fake engine): each choice has its own parser
    for i, text in ((0, "Checking."), (1, "hecking.")):
        content, calls, finish = got[i]
        assert content == text and finish == "tool_calls"
        assert [(n, json.loads(a)) for _, n, a in calls] == PY_CALLS
    assert len({c[0] for i in (0, 1) for c in got[i][1]}) == 4  # distinct ids
    assert all("get_weather(" not in (e["choices"][0]["delta"].get("content") or "")
               for e in events[:-1] if e["choices"] and e["choices"][0]["index"] == 0)


def test_auto_json_parser():
    reply = ('{"name": "add", "parameters": {"a": 5, "b": [], "mode": "exact"}}; '
             '{"name": "add", "parameters": {"a": -1, "b": [false], "mode": "fast"}}')
    app, _ = scripted_app(reply, tool_call_parser="llama4_json", enable_auto_tool_choice=True)
    msg = post(app, body()).json()["choices"][0]["message"]
    assert msg["content"] is None
    assert [json.loads(c["function"]["arguments"])["a"] for c in msg["tool_calls"]] == [5, -1]
    got = assemble(parse_sse(post(app, body(stream=True)).text))
    assert [json.loads(a)["a"] for _, _, a in got[0][1]] == [5, -1] and got[0][0] == "" and got[0][2] == "tool_calls"


@pytest.mark.parametrize("stream", [False, True])
def test_malformed_call_comes_back_as_content(stream):
    reply = '[get_weather(city=berlin)] sorry'  # a variable, not a literal
    app, _ = scripted_app(reply, **AUTO)
    r = post(app, body(stream=stream))
    if stream:
        content, calls, finish = assemble(parse_sse(r.text))[0]
    else:
        ch = r.json()["choices"][0]
        content, calls, finish = ch["message"]["content"], ch["message"].get("tool_calls") or [], ch["finish_reason"]
    assert content == reply and calls == [] and finish == "stop"


def test_tool_choice_none_keeps_text_and_tools_in_prompt():
    app, engines = scripted_app(PY_REPLY)  # no parser needed for none
    ch = post(app, body(tool_choice="none")).json()["choices"][0]
    assert ch["message"]["content"] == PY_REPLY and "tool_calls" not in ch["message"]
    assert ch["finish_reason"] == "stop" and engines[-1].tokenizer.seen["tools"] == TOOLS


def test_history_with_calls_and_results():
    app, engines = scripted_app("It is sunny.", **AUTO)
    msgs = [{"role": "user", "content": "weather?"},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "call_1", "type": "function",
                 "function": {"name": "get_weather", "arguments": '{"city": "Oslo", "unit": "C", "days": 1}'}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}]
    out = post(app, body(messages=msgs)).json()
    assert out["choices"][0]["message"]["content"] == "It is sunny."
    seen = engines[-1].tokenizer.seen["messages"]
    assert seen[1]["tool_calls"][0]["function"]["name"] == "get_weather" and seen[2]["tool_call_id"] == "call_1"


# ---- bad values: 400 naming the field ------------------------------------------------------------

def _schema_tool(params):
    return [{"type": "function", "function": {"name": "f", "parameters": params}}]


@pytest.mark.parametrize("patch, field, app_kwargs", [
    ({"tools": {"type": "function"}}, "tools", AUTO),
    ({"tools": [{"type": "function", "function": {"name": "bad name!"}}]}, "tools.0.function.name", AUTO),
    ({"tools": [{"type": "function", "function": {"name": "x" * 65}}]}, "tools.0.function.name", AUTO),
    ({"tools": [{"type": "retrieval", "function": {"name": "f"}}]}, "tools.0.type", AUTO),
    ({"tools": [{"type": "function"}]}, "tools.0.function", AUTO),
    ({"tools": _schema_tool({"type": "objekt"})}, "tools.0.function.parameters", AUTO),
    ({"tools": _schema_tool("not a schema")}, "tools.0.function.parameters", AUTO),
    ({"tools": TOOLS + [WEATHER]}, "tools", AUTO),
    ({"tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice", AUTO),
    ({"tool_choice": "sometimes"}, "tool_choice", AUTO),
    ({"tool_choice": {"type": "function"}}, "tool_choice", AUTO),
    ({"tools": None, "tool_choice": "required"}, "tool_choice", AUTO),
    ({"tools": None, "tool_choice": "auto"}, "tool_choice", AUTO),
    ({"parallel_tool_calls": "yes"}, "parallel_tool_calls", AUTO),
    ({}, "tool_choice", {}),  # auto (the default with tools) on a server without a parser
    ({"tool_choice": "auto"}, "tool_choice", {}),
    ({"tool_choice": "required", "response_format": {"type": "json_object"}}, "tool_choice", AUTO),
    ({"tool_choice": {"type": "function", "function": {"name": "add"}},
      "structured_outputs": {"regex": "a+"}}, "tool_choice", AUTO),
    ({"messages": [{"role": "user", "content": "x", "tool_calls": [
        {"type": "function", "function": {"name": "f", "arguments": "{}"}}]}]}, "messages.0.tool_calls", AUTO),
    ({"messages": [{"role": "assistant", "content": None, "tool_calls": [
        {"type": "function", "function": {"name": "f", "arguments": "{oops"}}]}]},
     "messages.0.tool_calls.0.function.arguments", AUTO),
    ({"messages": [{"role": "assistant", "tool_calls": [{"type": "function", "function": {"name": "f"}}]}]},
     "messages.0.tool_calls.0.function.arguments", AUTO),
    ({"functions": [{"name": "f"}]}, None, AUTO),
])
def test_bad_values_are_400_naming_the_field(patch, field, app_kwargs):
    app, engines = scripted_app("x", **app_kwargs)
    req = {k: v for k, v in {**body(), **patch}.items() if v is not None}
    err = post(app, req, status=400).json()["error"]
    if field is not None:
        assert err["param"] == field and field.split(".")[0] in err["message"], err
    else:
        assert "functions" in err["message"]
    assert all(not e.started for e in engines)


def test_server_options_checked_at_build():
    with pytest.raises(ValueError, match="tool_call_parser"):
        build_app(lambda: None, tool_call_parser="hermes")
    with pytest.raises(ValueError, match="enable_auto_tool_choice needs tool_call_parser"):
        build_app(lambda: None, enable_auto_tool_choice=True)


def test_serve_flags_and_deployment_args():
    from amd_llama4.cli import build_parser
    from amd_llama4.serve.deployment import split_args

    args = build_parser().parse_args(["serve", "--model", "m", "--tool-call-parser", "llama4_json",
                                      "--enable-auto-tool-choice"])
    assert (args.tool_call_parser, args.enable_auto_tool_choice) == ("llama4_json", True)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--model", "m", "--tool-call-parser", "hermes"])
    args = build_parser().parse_args(["serve", "--model", "m", "--enable-auto-tool-choice", "--no-ray"])
    with pytest.raises(SystemExit, match="needs --tool-call-parser"):
        args.func(args)  # refused before the model loads
    _, app = split_args({"model": "m", "tool_call_parser": "llama4_pythonic", "enable_auto_tool_choice": "true"})
    assert app == {"tool_call_parser": "llama4_pythonic", "enable_auto_tool_choice": True}


# ---- real engine: forced tool_choice through the grammar -----------------------------------------

@pytest.fixture(scope="module")
def live():
    import torch

    from amd_llama4.engine.async_engine import AsyncEngine
    from amd_llama4.engine.llm_engine import EngineArgs, LLMEngine
    from amd_llama4.model.loader import load_model

    model = load_model("tiny-scout", dtype=torch.float32, device="cpu", seed=3, progress=False)  # random weights
    engine = AsyncEngine(LLMEngine(EngineArgs(model="tiny-scout", dtype="float32", device="cpu", max_num_seqs=8,
                                              max_model_len=2048), model=model))
    try:
        with LiveServer(build_app(lambda: engine, max_queue=16, **AUTO)) as srv:
            yield openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0, timeout=120)
    finally:
        engine.shutdown()


def _check_calls(calls, names):
    assert calls, "no tool calls"
    for c in calls:
        assert c.type == "function" and c.id.startswith("chatcmpl-tool-") and c.function.name in names
        jsonschema.validate(json.loads(c.function.arguments), SCHEMAS[c.function.name])


def _stream_calls(stream):
    calls: dict[int, list] = {}
    finish, content = None, ""
    for chunk in stream:
        for ch in chunk.choices:
            content += ch.delta.content or ""
            for tc in ch.delta.tool_calls or []:
                acc = calls.setdefault(tc.index, [None, None, ""])
                if tc.id:
                    acc[0], acc[1] = tc.id, tc.function.name
                acc[2] += tc.function.arguments or ""
            finish = ch.finish_reason or finish
    return [calls[i] for i in sorted(calls)], content, finish


@pytest.mark.parametrize("seed", [0, 1])
def test_named_tool_choice_real_engine(live, seed):
    kw = dict(model="tiny-scout", messages=[{"role": "user", "content": "Weather in Paris for 3 days?"}],
              tools=TOOLS, tool_choice={"type": "function", "function": {"name": "get_weather"}},
              max_tokens=120, temperature=1.0, seed=seed)
    r = live.chat.completions.create(**kw)
    ch = r.choices[0]
    assert ch.finish_reason == "tool_calls" and ch.message.content is None
    _check_calls(ch.message.tool_calls, {"get_weather"})
    calls, content, finish = _stream_calls(live.chat.completions.create(stream=True, **kw))
    assert finish == "tool_calls" and content == "" and len(calls) == 1
    assert calls[0][1] == "get_weather" and calls[0][2] == ch.message.tool_calls[0].function.arguments  # same seed
    jsonschema.validate(json.loads(calls[0][2]), SCHEMAS["get_weather"])


@pytest.mark.parametrize("parallel", [True, False])
def test_required_tool_choice_real_engine(live, parallel):
    kw = dict(model="tiny-scout", messages=[{"role": "user", "content": "Add 2 and 3, then the weather."}],
              tools=TOOLS, tool_choice="required", max_tokens=300, temperature=0.8, seed=7,
              parallel_tool_calls=parallel)
    r = live.chat.completions.create(**kw)
    ch = r.choices[0]
    assert ch.finish_reason == "tool_calls", ch
    _check_calls(ch.message.tool_calls, {"get_weather", "add"})
    if not parallel:
        assert len(ch.message.tool_calls) == 1
    calls, content, finish = _stream_calls(live.chat.completions.create(stream=True, **kw))
    assert finish == "tool_calls" and content == ""
    assert [(n, json.loads(a)) for _, n, a in calls] == [
        (c.function.name, json.loads(c.function.arguments)) for c in ch.message.tool_calls]
    for _, name, args in calls:
        jsonschema.validate(json.loads(args), SCHEMAS[name])


def test_auto_real_engine_output_becomes_tool_calls(live):
    """tool_choice auto on the real engine: a regex (vLLM's structured_outputs extra) makes the random
    model write a pythonic call, which the llama4_pythonic parser turns into tool_calls."""
    regex = r'Sure\. \[get_weather\(city="[a-z]{1,8}", unit="[CF]", days=[1-7]\)\]'
    kw = dict(model="tiny-scout", messages=[{"role": "user", "content": "Weather?"}], tools=TOOLS,
              max_tokens=80, temperature=1.0, seed=5, extra_body={"structured_outputs": {"regex": regex}})
    ch = live.chat.completions.create(**kw).choices[0]
    assert ch.finish_reason == "tool_calls" and ch.message.content == "Sure."
    _check_calls(ch.message.tool_calls, {"get_weather"})
    calls, content, finish = _stream_calls(live.chat.completions.create(stream=True, **kw))
    assert finish == "tool_calls" and content == "Sure."
    assert [(n, a) for _, n, a in calls] == [(c.function.name, c.function.arguments) for c in ch.message.tool_calls]
