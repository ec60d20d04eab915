"""Acceptance: `LLM(model=folder, kv_cache_memory_bytes=B)` serves long prompts of a chunked-attention
checkpoint within a budget a dense cache (all layers x whole context) could not hold, with
transformers' greedy tokens; a budget that cannot hold one max_model_len sequence is a start-up error."""
import pytest
import torch

from amd_llama4 import LLM, Llama4Config, SamplingParams
from tests.hf_reference import save_hf

CFG = dict(vocab_size=101, hidden_size=48, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
           intermediate_size=40, intermediate_size_mlp=56, num_hidden_layers=4, attention_chunk_size=32,
           floor_scale=4, attn_scale=0.5, bos_token_id=1, eos_token_id=2, pad_token_id=0,
           max_position_embeddings=512, num_local_experts=4, num_experts_per_tok=1, interleave_moe_layer_step=1,
           use_qk_norm=True, rope_theta=10000.0, rope_scaling=dict(factor=16.0, low_freq_factor=1.0,
                                                                   high_freq_factor=1.0, original_max_position_embeddings=16))
NEW, MAX_LEN, BS = 12, 300, 8
# fp32 K and V of one token in one layer (3 chunked layers + 1 global)
TOKEN_LAYER_BYTES = 2 * CFG["num_key_value_heads"] * CFG["head_dim"] * 4
DENSE_ONE_SEQ = CFG["num_hidden_layers"] * MAX_LEN * TOKEN_LAYER_BYTES
# chunk-bounded: the global layer keeps 300 tokens (38 blocks), each chunked layer 32/8 + 1 blocks
BOUNDED_ONE_SEQ = (38 + 3 * 5) * BS * TOKEN_LAYER_BYTES


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("chunked-long")
    hf = save_hf(Llama4Config(**CFG), folder, seed=11)
    hf.generation_config.eos_token_id = None
    hf.generation_config.pad_token_id = 0
    return folder, hf


def _prompts(*lengths):
    g = torch.Generator().manual_seed(5)
    return [torch.randint(3, CFG["vocab_size"], (n,), generator=g).tolist() for n in lengths]


def _hf_greedy(hf, prompt):
    with torch.no_grad():
        out = hf.generate(torch.tensor([prompt]), max_new_tokens=NEW, do_sample=False, min_new_tokens=NEW)
    return out[0, len(prompt):].tolist()


def _cache_bytes(llm) -> int:
    c = llm.engine.cache
    return sum(t.numel() * t.element_size() for d in (c.k, c.v, c.token_scales) for t in d.values())


def test_long_prompts_fit_a_budget_a_dense_cache_could_not_and_match_transformers(checkpoint):
    folder, hf = checkpoint
    # room for one whole sequence plus a bit: the second request waits or is preempted, never overruns
    budget = BOUNDED_ONE_SEQ + 20 * BS * TOKEN_LAYER_BYTES
    assert budget < DENSE_ONE_SEQ / 2  # a dense cache could not hold even one of these prompts
    prompts = _prompts(270, 231)
    llm = LLM(str(folder), kv_cache_memory_bytes=budget, max_model_len=MAX_LEN, block_size=BS, max_num_seqs=2,
              max_num_batched_tokens=64)
    assert llm.engine.device.type == "cpu" and llm.engine.dtype == torch.float32  # "auto" on CPU
    assert llm.engine.cache.num_blocks == {"chunked": 2 * 5, "global": (budget - 10 * 3 * BS * TOKEN_LAYER_BYTES)
                                           // (BS * TOKEN_LAYER_BYTES)}
    assert _cache_bytes(llm) <= budget
    assert llm.engine.cache.num_blocks["global"] * BS < sum(len(p) for p in prompts)  # both cannot run at once
    outs = llm.generate(prompts, SamplingParams(temperature=0, max_tokens=NEW, ignore_eos=True))
    for p, o in zip(prompts, outs):
        assert o.outputs[0].finish_reason == "length"
        assert o.outputs[0].token_ids == _hf_greedy(hf, p), f"prompt of {len(p)} tokens diverged"
    assert llm.engine.stats()["kv_blocks_used"] == 0


def test_budget_below_one_sequence_is_a_start_up_error(checkpoint):
    folder, _ = checkpoint
    with pytest.raises(ValueError, match=r"max_model_len 300 needs .*estimated maximum model length is \d+"):
        LLM(str(folder), kv_cache_memory_bytes=BOUNDED_ONE_SEQ - 1, max_model_len=MAX_LEN, block_size=BS)
