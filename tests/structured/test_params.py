"""StructuredOutputsParams validation (errors name the field), the compile cache, the API mapping,
and the tensor-parallel sampling rank's matcher."""
import pytest

from amd_llama4.engine.sampling_params import SamplingParams as SP
from amd_llama4.engine.tokenizer import Tokenizer
from amd_llama4.structured import StructuredOutputsParams as SOP
from amd_llama4.structured.backend import LazyBackend, StructuredBackend
from amd_llama4.structured.request import (ResponseFormat, StructuredOutputsError, StructuredOutputsRequest,
                                           request_constraint)


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.from_pretrained("tiny-scout")


@pytest.mark.parametrize("kwargs,field", [
    ({}, "exactly one"),
    ({"regex": "a", "choice": ["a"]}, "exactly one"),
    ({"json": "{not json"}, "structured_outputs.json: not valid JSON"),
    ({"json": [1, 2]}, "structured_outputs.json: a JSON schema must be an object"),
    ({"json": {"type": "objectx"}}, "structured_outputs.json: Invalid type"),
    ({"json": {"properties": {"a": {"$ref": "#/nope"}}}}, "structured_outputs.json: .*nope"),
    ({"regex": "[a-"}, "structured_outputs.regex: .*unclosed"),
    ({"regex": ""}, "structured_outputs.regex: must be a non-empty string"),
    ({"grammar": "start: foo"}, "structured_outputs.grammar: .*unknown name"),
    ({"choice": []}, "structured_outputs.choice: must be a non-empty list"),
    ({"choice": ["a", 3]}, "structured_outputs.choice: must be a non-empty list"),
    ({"json_object": "yes"}, "structured_outputs.json_object: must be true"),
])
def test_bad_params_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        SOP(**kwargs)


def test_good_params_and_keys():
    a, b = SOP(json={"type": "object", "required": ["x"]}), SOP(json={"required": ["x"], "type": "object"})
    assert a.key() == b.key() and a.kind == "json"  # dicts are keyed canonically
    assert SOP(choice=("a", "b")).choice == ["a", "b"]
    assert SOP(grammar='start: "x" | "y"').kind == "grammar"
    assert SOP(json_object=True).key() == ("json_object", "")
    assert SOP(json='{"type": "integer"}').kind == "json"
    with pytest.raises(ValueError, match="SamplingParams.structured_outputs: must be a StructuredOutputsParams"):
        SP(structured_outputs={"regex": "a"})
    p = SP(n=3, structured_outputs=SOP(regex="a+")).for_sample(2)
    assert p.structured_outputs == SOP(regex="a+") and p.n == 1


def test_compile_cache_is_lru_and_matchers_are_independent(tok):
    be = StructuredBackend(tok, tok.eos_token_ids, cache_size=2)
    specs = [SOP(regex="a+"), SOP(regex="b+"), SOP(regex="c+")]
    for s in specs:
        be.compile(s)
    be.compile(specs[2])
    assert (be.misses, be.hits) == (3, 1)
    be.compile(specs[0])  # evicted by the third: compiled again
    assert be.misses == 4
    m1, m2 = be.matcher(specs[0]), be.matcher(specs[0])
    a = tok.encode("a", add_bos=False)[0]
    assert m1.accept(a) and m1.accepting and not m2.accepting  # one state per sequence
    m1.rollback(1)
    assert not m1.accepting
    with pytest.raises(ValueError, match="no tokenizer.json"):
        StructuredBackend(None, [2])


def test_lazy_backend_for_the_sampling_rank(tok):
    calls = []

    def load():
        calls.append(1)
        return tok, tok.eos_token_ids

    lazy = LazyBackend(load)
    assert not calls  # nothing loaded until a constrained request arrives
    lazy.matcher(SOP(regex="x"))
    lazy.matcher(SOP(regex="y"))
    assert len(calls) == 1


def test_tp_mirror_builds_and_replays_the_matcher(tok):
    """Rank 0's mirror of a (re-)sent request rebuilds the matcher and replays the ids generated so far."""
    from amd_llama4.engine.tp.wire import NewRequest, StepMirror

    ids = tok.encode("12", add_bos=False)
    mirror = StepMirror(LazyBackend(lambda: (tok, tok.eos_token_ids)))
    params = SP(structured_outputs=SOP(regex="[0-9]{2}"))
    mirror.apply(_msg(NewRequest(7, params, [5, 6], tok.eos_token_ids, ids)))
    st = mirror.sampling[7]
    assert st.matcher is not None and st.matcher.accepting and st.output_token_ids == ids
    assert st.check_stop(ids[-1]) == (True, "stop", None)  # "[0-9]{2}" cannot continue
    plain = StepMirror()  # a rank that does not sample builds none
    plain.apply(_msg(NewRequest(8, params, [5], tok.eos_token_ids, [])))
    assert plain.sampling[8].matcher is None


def _msg(new):
    from amd_llama4.engine.tp.wire import StepMessage

    return StepMessage([new], [], [])


@pytest.mark.parametrize("body,param", [
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nope"}}}},
     "response_format.json_schema.schema"),
    ({"response_format": {"type": "json_object"}, "structured_outputs": {"regex": "a"}}, "structured_outputs"),
    ({"structured_outputs": {"regex": "(a"}}, "structured_outputs.regex"),
    ({"structured_outputs": {"grammar": "start: x"}}, "structured_outputs.grammar"),
    ({"structured_outputs": {"json": "{"}}, "structured_outputs.json"),
])
def test_request_mapping_errors_name_the_field(body, param):
    rf = ResponseFormat.model_validate(body["response_format"]) if "response_format" in body else None
    so = StructuredOutputsRequest.model_validate(body["structured_outputs"]) if "structured_outputs" in body else None
    with pytest.raises(StructuredOutputsError) as e:
        request_constraint(rf, so)
    assert e.value.param == param and str(e.value).startswith(param.split(".")[0])


def test_request_mapping():
    rf = ResponseFormat.model_validate
    assert request_constraint(None, None) is None
    assert request_constraint(rf({"type": "text"}), None) is None
    assert request_constraint(rf({"type": "json_object"}), None) == SOP(json_object=True)
    strict = request_constraint(rf({"type": "json_schema", "json_schema": {"name": "n", "strict": True,
                                                                            "schema": {"type": "integer"}}}), None)
    assert strict.json == {"type": "integer"}
    loose = request_constraint(rf({"type": "json_schema", "json_schema": {"name": "n", "schema": {
        "type": "string", "format": "not-a-format"}}}), None)  # non-strict: unknown keywords ignored
    assert loose.json["x-guidance"] == {"lenient": True}
    with pytest.raises(StructuredOutputsError, match="Unknown format"):  # strict: refused
        request_constraint(rf({"type": "json_schema", "json_schema": {"name": "n", "strict": True, "schema": {
            "type": "string", "format": "not-a-format"}}}), None)
    so = StructuredOutputsRequest.model_validate
    assert request_constraint(None, so({"choice": ["a", "b"]})) == SOP(choice=["a", "b"])
    assert request_constraint(None, so({"json": {"type": "object"}})) == SOP(json={"type": "object"})
    assert request_constraint(None, so({"json_object": True})) == SOP(json_object=True)
