"""Constrained generation on a RANDOM-weight tiny model: whatever the model prefers, every output
matches its JSON schema / regex / choice and ends with finish_reason "stop"."""
import json
import random
import re

import pytest
import torch

from amd_llama4 import SamplingParams, load_model
from amd_llama4.engine.llm_engine import EngineArgs, LLMEngine
from amd_llama4.structured import StructuredOutputsParams as SOP

jsonschema = pytest.importorskip("jsonschema")

WORDS = ["red", "green", "blue", "a b", 'q"t', "x\\y"]


def gen_schema(rng: random.Random, depth: int = 0) -> dict:
    """A random schema: nested objects, arrays, enums, required fields, integer and number bounds,
    bounded strings (a random model would otherwise write strings until max_tokens)."""
    kinds = ["integer", "number", "enum", "boolean", "string", "null"] + (["object", "array"] * 2 if depth < 2 else [])
    k = rng.choice(kinds)
    if k == "integer":
        lo = rng.randint(-1000, 1000)
        return {"type": "integer", "minimum": lo, "maximum": lo + rng.randint(0, 500)}
    if k == "number":
        lo = rng.choice([-5.5, 0, 2, 10.25])
        s = {"type": "number", "minimum": lo, "maximum": lo + rng.choice([1, 3.5, 100])}
        if rng.random() < 0.3:
            s["exclusiveMaximum"] = s.pop("maximum")
        return s
    if k == "enum":
        return {"enum": rng.sample(WORDS + [1, 2.5, None, True], rng.randint(1, 4))}
    if k == "boolean":
        return {"type": "boolean"}
    if k == "null":
        return {"type": "null"}
    if k == "string":
        return {"type": "string", "minLength": rng.randint(0, 2), "maxLength": rng.randint(2, 6)}
    if k == "array":
        lo = rng.randint(0, 2)
        return {"type": "array", "items": gen_schema(rng, depth + 1), "minItems": lo,
                "maxItems": lo + rng.randint(0, 2)}
    return gen_object(rng, depth + 1)


def gen_object(rng: random.Random, depth: int) -> dict:
    props = {f"k{i}_{rng.choice(WORDS[:3])}": gen_schema(rng, depth) for i in range(rng.randint(1, 3))}
    req = [p for p in props if rng.random() < 0.7]
    return {"type": "object", "properties": props, "required": req, "additionalProperties": False}


SCHEMAS = [gen_object(random.Random(i), 0) for i in range(24)]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The tiny model's ops are too small for intra-op threads; on a shared 2-core box two threads
    make these steps ~10x slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def engine():
    model = load_model("tiny-scout", seed=0, progress=False)  # random weights
    return LLMEngine(EngineArgs(model="tiny-scout", num_kv_blocks=512, max_num_seqs=64, block_size=16), model=model)


def run(engine, reqs: dict[str, tuple[str, SamplingParams]]) -> dict:
    for rid, (prompt, p) in reqs.items():
        engine.add_request(rid, prompt, p)
    done = {}
    while engine.has_unfinished():
        for o in engine.step():
            if o.finished:
                done[o.request_id] = o
    return done


def test_generated_json_schemas_validate(engine):
    """24 generated schemas, 2 seeded samples each (n=2), one batched run; every output validates."""
    reqs = {f"s{i}": (f"object {i}:", SamplingParams(n=2, temperature=1.0, seed=i, max_tokens=200,
                                                     structured_outputs=SOP(json=s)))
            for i, s in enumerate(SCHEMAS)}
    done = run(engine, reqs)
    assert len(done) == len(SCHEMAS)
    nested = 0
    for i, s in enumerate(SCHEMAS):
        outs = done[f"s{i}"].outputs
        assert len(outs) == 2
        for c in outs:
            assert c.finish_reason == "stop", (s, c.text)
            jsonschema.validate(json.loads(c.text), s)
        nested += any(isinstance(v, (dict, list)) for v in json.loads(outs[0].text).values())
    assert nested >= 3  # the generator's nesting shows up in the outputs
    assert engine.stats()["kv_blocks_used"] == 0


def test_seeded_constrained_sampling_is_reproducible_and_json_object(engine):
    p = SamplingParams(temperature=1.0, seed=7, max_tokens=64, structured_outputs=SOP(json_object=True))
    a = run(engine, {"a": ("x", p)})["a"].outputs[0]
    b = run(engine, {"b": ("x", p)})["b"].outputs[0]
    assert a.text == b.text and a.finish_reason == "stop"
    assert isinstance(json.loads(a.text), dict)


def test_regex_choice_and_grammar(engine):
    reqs = {
        "re": ("id:", SamplingParams(temperature=1.0, seed=1, max_tokens=30,
                                     structured_outputs=SOP(regex=r"[A-Z]{2}-[0-9]{3}(-[a-z]{1,3})?"))),
        "greedy_re": ("id:", SamplingParams(temperature=0, max_tokens=30,
                                            structured_outputs=SOP(regex=r"(ab|cd){2,4}"))),
        "choice": ("pick:", SamplingParams(n=4, temperature=1.0, seed=2, max_tokens=20, logprobs=1,
                                           structured_outputs=SOP(choice=["yes", "no", "maybe so"]))),
        "best_of": ("pick:", SamplingParams(n=1, best_of=3, temperature=1.0, seed=4, max_tokens=20,
                                            structured_outputs=SOP(choice=["alpha", "beta"]))),
        "lark": ("calc:", SamplingParams(temperature=1.0, seed=3, max_tokens=40, structured_outputs=SOP(
            grammar='start: expr\nexpr: NUM | NUM OP expr\nOP: "+" | "*"\nNUM: /[1-9]/'))),
        "free": ("hello", SamplingParams(temperature=0, max_tokens=5, ignore_eos=True)),
    }
    done = run(engine, reqs)
    assert re.fullmatch(r"[A-Z]{2}-[0-9]{3}(-[a-z]{1,3})?", done["re"].outputs[0].text)
    assert re.fullmatch(r"(ab|cd){2,4}", done["greedy_re"].outputs[0].text)
    choices = done["choice"].outputs
    assert len(choices) == 4 and all(c.text in ("yes", "no", "maybe so") and c.finish_reason == "stop" for c in choices)
    assert all(lp.logprob > -1e9 for c in choices for lp, _ in c.logprobs)  # the sampled ids were allowed
    assert done["best_of"].outputs[0].text in ("alpha", "beta")
    assert re.fullmatch(r"[1-9]([+*][1-9])*", done["lark"].outputs[0].text)
    assert len(done["free"].outputs[0].token_ids) == 5  # an unconstrained neighbour is unaffected


def test_preempted_constrained_sequences_still_validate():
    """A tiny KV cache forces preemption (recompute): the matcher keeps its state with the tokens."""
    model = load_model("tiny-scout", seed=0, progress=False)
    eng = LLMEngine(EngineArgs(model="tiny-scout", num_kv_blocks=12, max_num_seqs=8, block_size=4,
                               enable_prefix_caching=True), model=model)
    schema = {"type": "object", "properties": {"v": {"type": "array", "items": {"type": "integer", "minimum": 0,
              "maximum": 99}, "minItems": 4, "maxItems": 6}}, "required": ["v"], "additionalProperties": False}
    reqs = {f"p{i}": ("same prefix for all " * 2, SamplingParams(temperature=1.0, seed=i, max_tokens=60,
                                                              structured_outputs=SOP(json=schema)))
            for i in range(6)}
    seqs = []
    add = eng.scheduler.add
    eng.scheduler.add = lambda seq: (seqs.append(seq), add(seq))[1]
    done = run(eng, reqs)
    assert sum(s.num_preemptions for s in seqs) > 0  # the point of this test
    for o in done.values():
        assert o.outputs[0].finish_reason == "stop", o.outputs[0].text
        jsonschema.validate(json.loads(o.outputs[0].text), schema)


def test_invalid_grammar_fails_at_add_request(engine):
    p = SamplingParams(structured_outputs=SOP(regex="a"))
    object.__setattr__(p.structured_outputs, "regex", "(")  # bypass the params' own check: the engine checks too
    with pytest.raises(ValueError, match="structured_outputs.regex"):
        engine.add_request("bad", "x", p)
    assert not engine.has_unfinished()
