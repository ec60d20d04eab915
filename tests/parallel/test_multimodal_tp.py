"""Images under tensor parallelism (CPU, gloo, Ray): every rank holds the replicated vision tower
and encodes a request's images itself from the pixel values sent once in the step message; greedy
tokens equal tp=1 (and so transformers, tests/engine/test_multimodal_engine.py)."""
import pytest

from amd_llama4 import LLM, SamplingParams
from tests.engine import mm_engine_helpers as h

SP = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True)


@pytest.mark.slow
def test_tp2_images_equal_single(ray_cluster, tmp_path):
    h.save_checkpoint(tmp_path, seed=11)
    imgs = [h.make_image(112, 112, seed=1), h.make_image(40, 90, seed=2)]
    prompts = [{"prompt": "a <|image|> b <|image|>", "multi_modal_data": {"image": imgs}},
               {"prompt": "c <|image|>", "multi_modal_data": {"image": imgs[1]}}, "text only"]
    # a small token budget: image tokens split across prefill pieces on every rank
    kw = dict(num_kv_blocks=64, block_size=4, max_num_batched_tokens=8, max_num_seqs=4)
    want = [o.outputs[0].token_ids for o in LLM(str(tmp_path), **kw).generate(prompts, SP)]
    llm = LLM(str(tmp_path), tensor_parallel_size=2, **kw)
    try:
        assert [o.outputs[0].token_ids for o in llm.generate(prompts, SP)] == want
        assert all(llm.engine.runner.call("has_vision"))
    finally:
        llm.shutdown()
