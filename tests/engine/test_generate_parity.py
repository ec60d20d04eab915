"""Greedy token ids equal transformers' generate(do_sample=False) on the same random checkpoints."""
import pytest
import torch

from amd_llama4 import LLM, Llama4Config, SamplingParams
from tests.hf_reference import save_hf

CFG = dict(vocab_size=101, hidden_size=48, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
           intermediate_size=40, intermediate_size_mlp=56, num_hidden_layers=4, attention_chunk_size=8,
           floor_scale=4, attn_scale=0.5, bos_token_id=1, eos_token_id=2, pad_token_id=0,
           max_position_embeddings=512)
MODELS = {
    "scout-like": dict(num_local_experts=8, num_experts_per_tok=1, interleave_moe_layer_step=1, use_qk_norm=True,
                       rope_theta=10000.0, rope_scaling=dict(factor=16.0, low_freq_factor=1.0, high_freq_factor=1.0,
                                                             original_max_position_embeddings=16)),
    "maverick-like": dict(num_local_experts=6, num_experts_per_tok=2, interleave_moe_layer_step=2,
                          use_qk_norm=False, rope_scaling=None),
}
NEW = 40


@pytest.fixture(scope="module", params=sorted(MODELS))
def checkpoint(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(request.param)
    hf = save_hf(Llama4Config(**CFG, **MODELS[request.param]), folder, seed=7)
    hf.generation_config.eos_token_id = None
    hf.generation_config.pad_token_id = 0
    return folder, hf


def _hf_greedy(hf, prompt):
    with torch.no_grad():
        out = hf.generate(torch.tensor([prompt]), max_new_tokens=NEW, do_sample=False, min_new_tokens=NEW)
    return out[0, len(prompt):].tolist()


def _prompts():
    g = torch.Generator().manual_seed(3)
    # shorter than a chunk; exactly one chunk; spanning 3+ chunks; decode crossing boundaries (8 | len+NEW)
    return [torch.randint(3, CFG["vocab_size"], (n,), generator=g).tolist() for n in (5, 8, 27, 13)]


def test_greedy_matches_transformers_batched(checkpoint):
    folder, hf = checkpoint
    prompts = _prompts()
    llm = LLM(str(folder), block_size=4, max_num_batched_tokens=64)
    outs = llm.generate(prompts, SamplingParams(temperature=0, max_tokens=NEW, ignore_eos=True))
    for p, o in zip(prompts, outs):
        assert o.outputs[0].finish_reason == "length"
        assert o.outputs[0].token_ids == _hf_greedy(hf, p), f"prompt of {len(p)} tokens diverged"
    assert llm.engine.stats()["kv_blocks_used"] == 0


def test_chunked_prefill_and_tiny_budget_match(checkpoint):
    """A prompt split into many prefill pieces (budget 3 tokens) gives the same tokens."""
    folder, hf = checkpoint
    prompt = _prompts()[2]
    llm = LLM(str(folder), block_size=3, max_num_batched_tokens=3, max_num_seqs=3)
    out = llm.generate([prompt], SamplingParams(temperature=0, max_tokens=NEW, ignore_eos=True))[0]
    assert out.outputs[0].token_ids == _hf_greedy(hf, prompt)
