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


def _tensors_or_vocab_lists(obj, vocab, path="result"):
    """Paths inside obj (lists, tuples, dicts, dataclasses) holding a tensor or a vocab-long list."""
    import dataclasses

    if isinstance(obj, torch.Tensor):
        return [f"{path}: tensor {tuple(obj.shape)}"]
    if isinstance(obj, (list, tuple)):
        bad = [f"{path}: {len(obj)}-long list"] if len(obj) >= vocab else []
        return bad + [p for i, x in enumerate(obj) for p in _tensors_or_vocab_lists(x, vocab, f"{path}[{i}]")]
    if isinstance(obj, dict):
        return [p for k, x in obj.items() for p in _tensors_or_vocab_lists(x, vocab, f"{path}[{k!r}]")]
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return [p for f in dataclasses.fields(obj)
                for p in _tensors_or_vocab_lists(getattr(obj, f.name), vocab, f"{path}.{f.name}")]
    return []


@pytest.mark.slow
def test_workers_return_sampled_ids_not_logits(ray_cluster, checkpoint, monkeypatch):
    """tp=2: rank 0 samples on its device; what reaches the driver is SampleResults (ids, requested
    logprobs), no tensor and nothing vocab-sized, and seeded sampling with top-k/top-p/penalties and
    logprobs gives tp=1's tokens."""
    from amd_llama4.engine.sampler import SampleResult

    folder, prompts, _ = checkpoint
    params = [SamplingParams(temperature=0.8, top_k=20, top_p=0.9, seed=7, max_tokens=12, ignore_eos=True,
                             logprobs=3),
              SamplingParams(temperature=1.0, repetition_penalty=1.2, min_p=0.05, seed=3, max_tokens=12,
                             ignore_eos=True)]
    from amd_llama4.engine.tp.executor import resolve_tp_device

    assert resolve_tp_device("auto", 2).type == "cpu"  # this Ray has no GPUs: CPU workers
    want = LLM(folder).generate(prompts, params)
    llm = LLM(folder, tensor_parallel_size=2)
    seen = []
    real_get = ray_cluster.get

    def recording_get(refs, *a, **kw):
        out = real_get(refs, *a, **kw)
        seen.append(out)
        return out

    monkeypatch.setattr(ray_cluster, "get", recording_get)
    try:
        got = llm.generate(prompts, params)
    finally:
        monkeypatch.undo()
        llm.shutdown()
    for w, g in zip(want, got):
        assert g.outputs[0].token_ids == w.outputs[0].token_ids
    for (wt, wtop), (gt, gtop) in zip(want[0].outputs[0].logprobs, got[0].outputs[0].logprobs):
        assert gt.token_id == wt.token_id and gt.logprob == pytest.approx(wt.logprob, abs=1e-4)
        assert [x.token_id for x in gtop] == [x.token_id for x in wtop]
    bad = [p for i, obj in enumerate(seen) for p in _tensors_or_vocab_lists(obj, CFG["vocab_size"], f"get#{i}")]
    assert not bad, bad
    results = [x for obj in seen if isinstance(obj, list) for x in obj if isinstance(x, SampleResult)]
    assert len(results) == sum(len(o.outputs[0].token_ids) for o in got)  # every sampled id came this way
