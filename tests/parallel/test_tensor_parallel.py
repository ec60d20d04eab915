"""Tensor and expert parallelism on CPU: gloo process groups in Ray actors, each rank loading only its
slices of a transformers-written checkpoint; greedy tokens identical to tp=1."""
import pytest
import torch

from amd_llama4 import LLM, Llama4Config, SamplingParams, load_model
from amd_llama4.parallel.tp import Parallel, shard_fn
from tests.hf_reference import save_hf

# 4 query heads / 2 KV heads: tp=2 splits KV heads, tp=4 replicates them; 4 experts, top-2.
CFG = dict(vocab_size=97, hidden_size=48, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
           intermediate_size=32, intermediate_size_mlp=64, num_hidden_layers=4, num_local_experts=4,
           num_experts_per_tok=2, interleave_moe_layer_step=2, attention_chunk_size=8, floor_scale=4,
           attn_scale=0.5, use_qk_norm=True, rope_scaling=None, bos_token_id=1, eos_token_id=2, pad_token_id=0,
           max_position_embeddings=512)
SP = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tp-ckpt")
    save_hf(Llama4Config(**CFG), folder, seed=11, max_shard_size="30KB")  # sharded: slices span files
    g = torch.Generator().manual_seed(5)
    prompts = [torch.randint(3, 97, (n,), generator=g).tolist() for n in (5, 19)]
    want = [o.outputs[0].token_ids for o in LLM(str(folder)).generate(prompts, SP)]
    return str(folder), prompts, want


@pytest.mark.slow
@pytest.mark.parametrize("tp,ep", [(2, False), (2, True), (4, False)])
def test_parallel_greedy_equals_single(ray_cluster, checkpoint, tp, ep):
    folder, prompts, want = checkpoint
    llm = LLM(folder, tensor_parallel_size=tp, expert_parallel=ep)
    try:
        got = [o.outputs[0].token_ids for o in llm.generate(prompts, SP)]
        assert got == want
        per_rank = llm.engine.runner.call("resident_weight_bytes")
    finally:
        llm.shutdown()
    assert len(per_rank) == tp and len(set(per_rank)) == 1
    full = load_model(folder, progress=False)
    sharded = replicated = 0
    for name, p in full.named_parameters():
        n = p.numel() * p.element_size()
        if shard_fn(name, full.config, Parallel(0, tp, ep)) is None:
            replicated += n
        else:
            sharded += n
    # KV projections are replicated beyond the KV head count (tp=4 > 2 heads): they shrink by 2, not 4
    kv_extra = 0 if tp <= CFG["num_key_value_heads"] else sum(
        p.numel() * p.element_size() for n_, p in full.named_parameters()
        if ".k_proj." in n_ or ".v_proj." in n_) * (1 / CFG["num_key_value_heads"] - 1 / tp)
    assert per_rank[0] == pytest.approx(replicated + sharded / tp + kv_extra, rel=1e-9)
    assert per_rank[0] < 0.75 * (replicated + sharded)


def test_rank_slices_reassemble_the_full_weights(checkpoint):
    """Loading each rank's slices (lazily, from the safetensors files) and concatenating gives the full model."""
    folder = checkpoint[0]
    full = dict(load_model(folder, progress=False).named_parameters())
    ranks = [dict(load_model(folder, progress=False, parallel=Parallel(r, 2)).named_parameters()) for r in (0, 1)]
    q = "model.layers.0.self_attn.q_proj.weight"
    torch.testing.assert_close(torch.cat([ranks[0][q], ranks[1][q]]), full[q], rtol=0, atol=0)
    o = "model.layers.0.self_attn.o_proj.weight"
    torch.testing.assert_close(torch.cat([ranks[0][o], ranks[1][o]], dim=1), full[o], rtol=0, atol=0)
    gu = "model.layers.1.feed_forward.experts.gate_up_proj"
    inter = CFG["intermediate_size"]
    halves = [torch.cat([r[gu][..., :inter // 2] for r in ranks], -1), torch.cat([r[gu][..., inter // 2:] for r in ranks], -1)]
    torch.testing.assert_close(torch.cat(halves, -1), full[gu], rtol=0, atol=0)
    with pytest.raises(ValueError, match="tensor_parallel_size=3"):
        load_model(folder, progress=False, parallel=Parallel(0, 3))
