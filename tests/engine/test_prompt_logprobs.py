"""Prompt logprobs (vLLM's prompt_logprobs, echo + logprobs) equal transformers' log_softmax (fp32,
1e-4) on a random checkpoint saved by transformers; max_tokens=0 scores without sampling; a cached
prefix never skips the rows a prompt-logprobs request needs; logit_bias moves the sampled token."""
import pytest
import torch

from amd_llama4 import Llama4Config, SamplingParams
from amd_llama4.engine.llm_engine import EngineArgs, LLMEngine
from tests.hf_reference import save_hf

CFG = dict(vocab_size=101, hidden_size=48, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
           intermediate_size=40, intermediate_size_mlp=56, num_hidden_layers=4, attention_chunk_size=8,
           floor_scale=4, attn_scale=0.5, bos_token_id=1, eos_token_id=2, pad_token_id=0,
           max_position_embeddings=256, num_local_experts=4, num_experts_per_tok=1, interleave_moe_layer_step=1,
           use_qk_norm=True, rope_scaling=None)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("plp")
    hf = save_hf(Llama4Config(**CFG), folder, seed=11)
    return folder, hf.float().eval()


def _prompts(*lens):
    g = torch.Generator().manual_seed(5)
    return [torch.randint(3, CFG["vocab_size"], (n,), generator=g).tolist() for n in lens]


def _hf_logprobs(hf, prompt):
    with torch.no_grad():
        logits = hf(torch.tensor([prompt])).logits[0].float()  # [L, V]
    return torch.log_softmax(logits, dim=-1)


def _run(engine, prompts, params):
    """-> {request id: (prompt_logprobs, final CompletionOutput)} for CUMULATIVE outputs."""
    for i, p in enumerate(prompts):
        engine.add_request(str(i), p, params)
    got = {}
    while engine.has_unfinished():
        for out in engine.step():
            plp = getattr(out, "prompt_logprobs", None)
            prev = got.get(out.request_id, (None, None))[0]
            got[out.request_id] = (plp if plp is not None else prev, out.outputs[0] if out.outputs else None)
    return [got[str(i)] for i in range(len(prompts))]


def _check(hf, prompt, plp, k):
    ref = _hf_logprobs(hf, prompt)  # [L, V]
    assert len(plp) == len(prompt) and plp[0] is None
    for pos in range(1, len(prompt)):
        sampled, alts = plp[pos]
        assert sampled.token_id == prompt[pos]
        torch.testing.assert_close(torch.tensor(sampled.logprob), ref[pos - 1, prompt[pos]].double(),
                                   atol=1e-4, rtol=0, check_dtype=False)
        assert len(alts) == k
        if k:
            tv, ti = ref[pos - 1].topk(k)
            torch.testing.assert_close(torch.tensor([a.logprob for a in alts]), tv.double(), atol=1e-4, rtol=0,
                                       check_dtype=False)


# max_num_batched_tokens 5: prompts of 1, 7 and 29 tokens run as several ragged prefill pieces
@pytest.mark.parametrize("budget", [5, 64])
def test_prompt_logprobs_match_transformers(checkpoint, budget):
    folder, hf = checkpoint
    engine = LLMEngine(EngineArgs(str(folder), dtype="float32", block_size=4, max_num_seqs=4,
                                  max_num_batched_tokens=budget, num_kv_blocks=64))
    prompts = _prompts(1, 7, 29)
    res = _run(engine, prompts, SamplingParams(temperature=0, max_tokens=2, ignore_eos=True, prompt_logprobs=3))
    for p, (plp, out) in zip(prompts, res):
        _check(hf, p, plp, 3)
        assert len(out.token_ids) == 2


def test_max_tokens_zero_scores_only(checkpoint):
    folder, hf = checkpoint
    engine = LLMEngine(EngineArgs(str(folder), dtype="float32", block_size=4, num_kv_blocks=64))
    prompt = _prompts(13)[0]
    (plp, out), = _run(engine, [prompt], SamplingParams(max_tokens=0, prompt_logprobs=0))
    _check(hf, prompt, plp, 0)
    assert out.token_ids == [] and out.finish_reason == "length"
    assert engine.stats()["kv_blocks_used"] == 0


def test_cached_prefix_never_skips_prompt_rows(checkpoint):
    """The same prompt twice with prefix caching on: the second (prompt-logprobs) request still
    computes every row, and a plain request after it still hits the cache."""
    folder, hf = checkpoint
    engine = LLMEngine(EngineArgs(str(folder), dtype="float32", block_size=4, num_kv_blocks=64,
                                  enable_prefix_caching=True))
    prompt = _prompts(21)[0]
    _run(engine, [prompt], SamplingParams(temperature=0, max_tokens=1))
    hits = engine.cache.usage()["prefix_cache_hits"]
    (plp, _), = _run(engine, [prompt], SamplingParams(max_tokens=0, prompt_logprobs=1))
    _check(hf, prompt, plp, 1)
    assert engine.cache.usage()["prefix_cache_hits"] == hits
    _run(engine, [prompt], SamplingParams(temperature=0, max_tokens=1))
    assert engine.cache.usage()["prefix_cache_hits"] > hits  # the cache itself works


def test_prompt_logprobs_validation():
    with pytest.raises(ValueError, match="prompt_logprobs"):
        SamplingParams(prompt_logprobs=21)
    with pytest.raises(ValueError, match="max_tokens"):
        SamplingParams(max_tokens=-1)
    with pytest.raises(ValueError, match="logit_bias"):
        SamplingParams(logit_bias={5: 101.0})
    with pytest.raises(ValueError, match="logit_bias"):
        SamplingParams(logit_bias={-1: 1.0})


def test_logit_bias_forces_and_bans(checkpoint):
    folder, _ = checkpoint
    engine = LLMEngine(EngineArgs(str(folder), dtype="float32", block_size=4, num_kv_blocks=64))
    prompt = _prompts(6)[0]
    (_, plain), = _run(engine, [prompt], SamplingParams(temperature=0, max_tokens=3, ignore_eos=True))
    engine.add_request("forced", prompt, SamplingParams(temperature=0, max_tokens=3, ignore_eos=True,
                                                        logit_bias={57: 100.0}))
    engine.add_request("banned", prompt, SamplingParams(temperature=0, max_tokens=3, ignore_eos=True,
                                                        logit_bias={t: -100.0 for t in plain.token_ids}))
    final = {}
    while engine.has_unfinished():
        for out in engine.step():
            final[out.request_id] = out.outputs[0]
    assert final["forced"].token_ids == [57, 57, 57]
    assert not set(final["banned"].token_ids) & set(plain.token_ids)


def test_developer_and_tool_roles_render_as_llama4_roles():
    from amd_llama4.engine.tokenizer import Tokenizer

    tok = Tokenizer.from_pretrained("tiny-scout")
    dev = tok.apply_chat_template([{"role": "developer", "content": "be brief"}, {"role": "user", "content": "hi"}])
    sys_ = tok.apply_chat_template([{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}])
    assert dev == sys_
    out = tok.apply_chat_template([{"role": "user", "content": "x"}, {"role": "assistant", "content": "[f()]"},
                                   {"role": "tool", "content": "42"}, {"role": "ipython", "content": "43"}])
    assert out.count("<|header_start|>ipython<|header_end|>") == 2 and "tool<|header_end|>" not in out
    with pytest.raises(ValueError, match=r"messages\[1\]"):
        tok.apply_chat_template([{"role": "user", "content": "x"}, {"role": "developer", "content": "late"}])


def test_llm_generate_returns_prompt_logprobs(checkpoint):
    """Through LLM.generate (DELTA outputs merged by the accumulator) the prompt logprobs arrive whole."""
    from amd_llama4 import LLM

    folder, hf = checkpoint
    prompt = _prompts(9)[0]
    out = LLM(str(folder), enable_prefix_caching=False).generate(
        [prompt], SamplingParams(max_tokens=0, prompt_logprobs=2))[0]
    _check(hf, prompt, out.prompt_logprobs, 2)
    assert out.outputs[0].token_ids == [] and out.outputs[0].finish_reason == "length"
