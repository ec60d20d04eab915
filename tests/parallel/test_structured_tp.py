"""Structured outputs under tensor parallelism (tp=2, gloo workers in Ray on CPU): rank 0 builds its
own matchers (it samples) and the driver's matchers end the sequences; the tokens equal tp=1's."""
import json

import pytest
import torch

from amd_llama4 import LLM, SamplingParams
from amd_llama4.structured import StructuredOutputsParams as SOP

SCHEMA = {"type": "object", "properties": {"n": {"type": "integer", "minimum": 0, "maximum": 999},
                                           "c": {"enum": ["x", "y", "z"]}},
          "required": ["n", "c"], "additionalProperties": False}


@pytest.mark.slow
def test_tp2_constrained_equals_tp1(ray_cluster):
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    params = [SamplingParams(temperature=1.0, seed=s, max_tokens=60, structured_outputs=SOP(json=SCHEMA))
              for s in range(3)] + [SamplingParams(n=2, temperature=1.0, seed=9, max_tokens=20,
                                                   structured_outputs=SOP(choice=["left", "right"]))]
    prompts = ["a", "b", "c", "d"]
    try:
        want = LLM("tiny-scout", max_model_len=256).generate(prompts, params)
        llm = LLM("tiny-scout", max_model_len=256, tensor_parallel_size=2)
        try:
            got = llm.generate(prompts, params)
        finally:
            llm.shutdown()
    finally:
        torch.set_num_threads(n)
    for w, g in zip(want, got):
        assert [c.token_ids for c in g.outputs] == [c.token_ids for c in w.outputs]
        assert all(c.finish_reason == "stop" for c in g.outputs)
    for o in got[:3]:
        v = json.loads(o.outputs[0].text)
        assert set(v) == {"n", "c"} and 0 <= v["n"] <= 999 and v["c"] in "xyz"
    assert all(c.text in ("left", "right") for c in got[3].outputs)
