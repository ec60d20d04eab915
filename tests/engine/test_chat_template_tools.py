"""The tiny tokenizer's Llama 4 chat template with tools: tool list in the system turn, assistant
tool_calls in Llama 4's pythonic form, tool/ipython results as ipython turns -- equal to transformers'
apply_chat_template with the same template, and the calls it renders parse back with our parser."""
from __future__ import annotations

import copy
import json
import shutil

import pytest

from amd_llama4.engine.tokenizer import Tokenizer, tiny_tokenizer_dir
from amd_llama4.serve.tools import get_parser

transformers = pytest.importorskip("transformers")

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city <b>now</b> & later",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"},
                                                    "unit": {"type": "string", "enum": ["C", "F"]}},
                   "required": ["city"]}}}
ADD = {"type": "function", "function": {"name": "add", "parameters": {
    "type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "number"}}}}}
NOARGS = {"type": "function", "function": {"name": "now", "description": "the time"}}


def _call(name, args, i=0):
    return {"id": f"call_{i}", "type": "function", "function": {"name": name, "arguments": args}}


CONVERSATIONS = [
    # tools, no system message
    ([{"role": "user", "content": "Weather in Paris?"}], [WEATHER]),
    # system message merged with the tool list; several tools; a call, its result, a final answer
    ([{"role": "system", "content": "Be brief."},
      {"role": "user", "content": "Weather in Zürich, and 2+3.5?"},
      {"role": "assistant", "content": None, "tool_calls": [
          _call("get_weather", {"city": "Zürich", "unit": "C"}), _call("add", {"a": 2, "b": 3.5}, 1)]},
      {"role": "tool", "tool_call_id": "call_0", "content": "18 C, \"sunny\""},
      {"role": "tool", "tool_call_id": "call_1", "content": "5.5"},
      {"role": "assistant", "content": "18 C and 5.5."},
      {"role": "user", "content": "Thanks"}], [WEATHER, ADD, NOARGS]),
    # developer role as the system turn; an assistant turn with text and a call; ipython role;
    # nested and quoted arguments; a no-argument call; a result given as text parts
    ([{"role": "developer", "content": "Use tools."},
      {"role": "user", "content": [{"type": "text", "text": "Say "}, {"type": "text", "text": "hi"}]},
      {"role": "assistant", "content": "Checking.", "tool_calls": [
          _call("get_weather", {"city": "a \"quoted\", [bracketed] city", "extra": {"k": [1, None, True]}}),
          _call("now", {}, 1)]},
      {"role": "ipython", "content": [{"type": "text", "text": "{\"t\": \"12:00\"}"}]}], [WEATHER, NOARGS]),
    # tools given but a plain conversation
    ([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
      {"role": "user", "content": "bye"}], [ADD]),
    # no tools at all: a tool result still renders as ipython
    ([{"role": "user", "content": "x"},
      {"role": "assistant", "content": "", "tool_calls": [_call("add", {"a": 1})]},
      {"role": "tool", "content": "2"}], None),
]


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.from_pretrained("tiny-scout")


@pytest.fixture(scope="module")
def hf():
    return transformers.AutoTokenizer.from_pretrained(str(tiny_tokenizer_dir()))


@pytest.mark.parametrize("case", range(len(CONVERSATIONS)))
@pytest.mark.parametrize("gen", [True, False])
def test_equal_to_transformers(tok, hf, case, gen):
    msgs, tools = CONVERSATIONS[case]
    theirs = hf.apply_chat_template(copy.deepcopy(msgs), tools=copy.deepcopy(tools), tokenize=False,
                                    add_generation_prompt=gen)
    ours = tok.apply_chat_template(copy.deepcopy(msgs), tools=copy.deepcopy(tools), add_generation_prompt=gen)
    assert ours == theirs
    # OpenAI sends arguments as JSON text: rendered the same
    as_text = copy.deepcopy(msgs)
    for m in as_text:
        for c in m.get("tool_calls") or []:
            c["function"]["arguments"] = json.dumps(c["function"]["arguments"])
    assert tok.apply_chat_template(as_text, tools=tools, add_generation_prompt=gen) == theirs
    assert tok.apply_chat_template(msgs, tools=tools, tokenize=True, add_generation_prompt=gen) == tok.encode(theirs)


def test_layout(tok):
    msgs, tools = CONVERSATIONS[1]
    text = tok.apply_chat_template(msgs, tools=tools)
    system = "<|begin_of_text|><|header_start|>system<|header_end|>\n\nBe brief.\n\n"
    assert text.startswith(system) and text.count("<|header_start|>system") == 1
    assert json.dumps([WEATHER, ADD, NOARGS], indent=4, ensure_ascii=False) in text  # not HTML-escaped
    assert ('<|header_start|>assistant<|header_end|>\n\n[get_weather(city="Zürich", unit="C"), add(a=2, b=3.5)]'
            '<|eot|>') in text
    assert text.count("<|header_start|>ipython<|header_end|>\n\n") == 2
    assert '<|header_start|>ipython<|header_end|>\n\n18 C, "sunny"<|eot|>' in text
    assert text.endswith("<|header_start|>assistant<|header_end|>\n\n")
    # without tools the template is the plain Llama 4 chat format
    plain = tok.apply_chat_template([{"role": "user", "content": "hi"}])
    assert plain == ("<|begin_of_text|><|header_start|>user<|header_end|>\n\nhi<|eot|>"
                     "<|header_start|>assistant<|header_end|>\n\n")


def test_rendered_calls_parse_back(tok):
    """What the template writes for a past call is what the pythonic parser reads (same calls)."""
    msgs, tools = CONVERSATIONS[2]
    text = tok.apply_chat_template(msgs, tools=tools, add_generation_prompt=False)
    turn = text.split("<|header_start|>assistant<|header_end|>\n\n")[1].split("<|eot|>")[0]
    content, calls = get_parser("llama4_pythonic").extract(turn)
    assert content == "Checking."
    expected = [(c["function"]["name"], c["function"]["arguments"]) for c in msgs[2]["tool_calls"]]
    assert [(c.name, json.loads(c.arguments)) for c in calls] == expected


@pytest.mark.parametrize("msgs, tools, match", [
    ([{"role": "user", "content": "x", "tool_calls": [_call("f", {})]}], None, r"messages\[0\].tool_calls"),
    ([{"role": "assistant", "content": None, "tool_calls": "f()"}], None, r"tool_calls: must be a list"),
    ([{"role": "assistant", "content": None, "tool_calls": [{"function": {"arguments": "{}"}}]}], None,
     r"tool_calls\[0\].function.name"),
    ([{"role": "assistant", "content": None, "tool_calls": [_call("f", "{not json")]}], None,
     r"tool_calls\[0\].function.arguments: not valid JSON"),
    ([{"role": "assistant", "content": None, "tool_calls": [_call("f", "[1]")]}], None,
     r"arguments: must be a JSON object"),
    ([{"role": "user", "content": "x"}], "not a list", "tools"),
    ([{"role": "user", "content": "x"}], ["not a dict"], "tools"),
])
def test_bad_tool_inputs_name_the_field(tok, msgs, tools, match):
    with pytest.raises(ValueError, match=match):
        tok.apply_chat_template(msgs, tools=tools)


def _meta_template() -> str:
    """The module-level `chat_template` of transformers' processing_llama4.py, read without importing
    it (its imports pull in the image stack)."""
    import ast
    import importlib.util

    spec = importlib.util.find_spec("transformers.models.llama4.processing_llama4")
    if spec is None or spec.origin is None:
        pytest.skip("transformers has no Llama 4 processor")
    tree = ast.parse(open(spec.origin, encoding="utf-8").read())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "chat_template" for t in node.targets):
            return ast.literal_eval(node.value)
    pytest.skip("no chat_template in transformers' processing_llama4.py")


def test_meta_template_with_tools_equals_transformers(tmp_path):
    """A released checkpoint's own template (Meta's Llama 4 Instruct one, as transformers ships it)
    renders tools, calls and results through our tokenizer exactly as transformers does, and the
    JSON calls it writes parse back with the llama4_json parser."""
    meta = _meta_template()
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny_tokenizer_dir() / f, tmp_path / f)
    (tmp_path / "chat_template.jinja").write_text(meta, encoding="utf-8")
    ours = Tokenizer.from_pretrained(tmp_path)
    theirs = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Weather?"},
            {"role": "assistant", "content": "", "tool_calls": [_call("get_weather", {"city": "Oslo"})]},
            {"role": "ipython", "content": "sunny"}]
    want = theirs.apply_chat_template(copy.deepcopy(msgs), tools=[WEATHER, ADD], tokenize=False,
                                      add_generation_prompt=True)
    assert ours.apply_chat_template(msgs, tools=[WEATHER, ADD]) == want
    assert "Given the following functions" in want and json.dumps(WEATHER, indent=4) in want
    turn = want.split("<|python_end|>")[1].split("<|eot|>")[0]
    content, calls = get_parser("llama4_json").extract(turn)
    assert content is None and [(c.name, json.loads(c.arguments)) for c in calls] == [("get_weather", {"city": "Oslo"})]
