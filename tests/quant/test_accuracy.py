"""FP8 accuracy against fp32 on random tiny models, teacher-forced through the paged cache.

Measured (320 positions per seed, seeds 0-5, 2 CPU threads; see docs/fp8.md):
  w8a8 (weights + dynamic per-token activations), tiny-scout:    agreement 0.841-0.906, KL 1.3e-4-1.6e-4
  w8a8, tiny-maverick:                                           agreement 0.850-0.922, KL 1.2e-4-1.3e-4
  w8a8 on positions whose reference margin top1-top2 > 0.5 logit std: agreement 1.000 on every seed
  fp8 KV alone (per-token scales), one decode step per token:   agreement 0.944-0.978, KL 1.8e-5-3.3e-5
    (tiny-scout and tiny-maverick, seeds 0-2, both formats; 0.919-0.959 with the earlier first-write scales)
The issue's aims (0.95 / 0.98) are not met on random models: their logits are near-tied (mean
top1-top2 gap 0.26-0.37 logit std) and the disagreements are all at near-ties; every linear layer's
error equals FP8 rounding alone (0.036 relative = sqrt(2) x 0.026 for e4m3 on Gaussians), so there is
no avoidable error to remove. KL (the aim is <= 0.05) is 300x below it. Thresholds: pooled over two
seeds, a margin below the lowest measured values.
"""
import pytest
import torch

from amd_llama4 import load_model
from amd_llama4.tools.quant_accuracy import agreement_and_kl, teacher_forced_logits, top1_margin
from amd_llama4.quant.fp8 import FP8Experts, FP8Linear

N = 320
SEEDS = (0, 1)


def _ids(seed, vocab):
    return torch.randint(5, vocab, (N,), generator=torch.Generator().manual_seed(100 + seed)).tolist()


@pytest.fixture(scope="module")
def scout():
    """seed -> (fp32 model, token ids, fp32 reference logits [N, V])."""
    out = {}
    for s in SEEDS:
        m = load_model("tiny-scout", seed=s)
        ids = _ids(s, m.config.vocab_size)
        out[s] = (m, ids, teacher_forced_logits(m, ids, tokens_per_step=16))
    return out


def _pooled(pairs):
    ref = torch.cat([r for r, _ in pairs])
    test = torch.cat([t for _, t in pairs])
    return ref, test


def test_w8a8_accuracy_tiny_scout(scout):
    pairs = []
    for s, (_, ids, ref) in scout.items():
        q = load_model("tiny-scout", seed=s, quantization="fp8")
        assert isinstance(q.model.layers[0].self_attn.q_proj, FP8Linear)
        assert isinstance(q.model.layers[0].feed_forward.experts, FP8Experts)
        pairs.append((ref, teacher_forced_logits(q, ids, tokens_per_step=16)))
    ref, test = _pooled(pairs)
    assert ref.shape[0] >= 256 and torch.isfinite(test).all()
    agree, kl = agreement_and_kl(ref, test)
    assert agree >= 0.80, f"w8a8 top-1 agreement {agree:.3f} (measured 0.84-0.91 per seed)"
    assert kl <= 4e-4, f"w8a8 mean KL {kl:.2e} (measured <= 1.6e-4)"
    sure = top1_margin(ref) > 0.5
    assert sure.sum() >= 64
    agree_sure, _ = agreement_and_kl(ref[sure], test[sure])
    assert agree_sure >= 0.99, f"w8a8 agreement where the reference is not near a tie: {agree_sure:.3f}"


def test_w8a8_accuracy_tiny_maverick_dense_layers():
    """Maverick interleaves dense MLP layers (FP8Linear gate/up/down) with MoE layers."""
    ref_m = load_model("tiny-maverick", seed=0)
    q = load_model("tiny-maverick", seed=0, quantization="fp8")
    assert isinstance(q.model.layers[0].feed_forward.down_proj, FP8Linear)
    assert isinstance(q.model.layers[1].feed_forward.router, torch.nn.Linear)  # the router stays high precision
    ids = _ids(0, ref_m.config.vocab_size)
    agree, kl = agreement_and_kl(teacher_forced_logits(ref_m, ids, tokens_per_step=16),
                                 teacher_forced_logits(q, ids, tokens_per_step=16))
    assert agree >= 0.85 and kl <= 4e-4, f"tiny-maverick w8a8: agreement {agree:.3f} (measured 0.922), KL {kl:.2e}"


def test_fp8_kv_cache_alone(scout):
    """Every token its own decode step: every key is read back from the fp8 cache, and the scales are
    calibrated from the first single token (the worst case for computed scales)."""
    pairs = [(ref, teacher_forced_logits(m, ids, kv_cache_dtype="fp8")) for m, ids, ref in scout.values()]
    ref, test = _pooled(pairs)
    agree, kl = agreement_and_kl(ref, test)
    assert agree >= 0.90, f"fp8 KV top-1 agreement {agree:.3f} (measured 0.944-0.978 per seed)"
    assert kl <= 1e-4, f"fp8 KV mean KL {kl:.2e} (measured <= 3.8e-5)"


def test_llm_quantization_fp8_quantises():
    from amd_llama4 import LLM, SamplingParams

    llm = LLM("tiny-scout", quantization="fp8", kv_cache_dtype="fp8", max_model_len=64, max_num_seqs=2)
    assert isinstance(llm.engine.model.model.layers[0].self_attn.o_proj, FP8Linear)
    assert llm.engine.cache.k["global"].dtype in (torch.float8_e4m3fn, torch.float8_e4m3fnuz)
    out = llm.generate([[1, 20, 30, 40]], SamplingParams(temperature=0, max_tokens=5, ignore_eos=True))
    assert len(out[0].outputs[0].token_ids) == 5
