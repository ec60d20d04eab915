"""FP8 accuracy on a tiny Llama 4 TRAINED on text (tests/quant/tiny_trained.py: tiny-scout with head_dim
128, 300 AdamW steps of 8 sequences of bos + 127 tokens of stdlib docstrings, ~36 s on 2 idle CPU cores),
teacher-forced through the paged cache on 4 held-out sequences of 2048 positions (bos, then other
modules' docstrings): 8192 positions, 32 tokens per step.

Measured, training seeds 0-4, e4m3fn and e4m3fnuz (AMD_LLAMA4_NO_NATIVE=1 within 0.0003):
  held-out loss 3.60-3.96 nats (uniform: 6.24), mean top-1 probability 0.15-0.22
  FP8 KV alone:                agreement 0.9856-0.9894, KL 2.5e-4-5.5e-4
  FP8 weights + activations:   agreement 0.9734-0.9817, KL 5.0e-4-1.0e-3
Asserted: the issue's aims, overall, on every position: KV alone agreement >= 0.98 (lowest measured 0.9856:
~4 binomial standard errors above), weights + activations >= 0.95, KL <= 0.05 for both; and that the fp8
cache's logits equal fp32 attention on K/V rounded to fp8 with the same scales, which catches a wrong or
saturating scale or a low-precision dequantisation even where agreement would not notice (per-layer scales
from the first write, or dequantising through bf16, still give agreement >= 0.98 here).

These figures are a property of the tiny model more than of FP8, whose only KV error is the rounding:
  - the same recipe with the preset's head_dim 32 (seeds 0-2): KV alone 0.9799-0.9836, KL 7.0e-4-1.2e-3;
    weights + activations 0.9674-0.9728, KL 1.2e-3-1.7e-3; held-out loss 3.62-3.76;
  - training longer makes a tiny model MORE sensitive, not less: 550 steps at lr 1.5e-3 (seed 0, held-out
    loss 3.17 / 3.25, top-1 probability 0.31 / 0.30) give KV alone 0.9750-0.9762 / 0.9829-0.9844 and
    weights + activations 0.9558-0.9596 / 0.9677-0.9696 with head_dim 32 / 128;
  - the earlier evaluation (one sequence of 320 positions) read 0.978-0.991 for KV alone: at 320
    positions one flip is 0.3%.
"""
import pytest
import torch

from amd_llama4.config import QuantConfig
from amd_llama4.engine.kv_cache import KVCache
from amd_llama4.platform import torch_fp8_dtype
from amd_llama4.tools.quant_accuracy import agreement_and_kl, teacher_forced_logits
from amd_llama4.quant.fp8 import FP8Experts, FP8Linear, quantize_model
from tests.quant.tiny_trained import held_out_sequences, load_trained, logits, next_token_loss

N_DECODE = 160  # positions (5 attention chunks) of the one-token-per-step check


@pytest.fixture(scope="module")
def setup(trained_tiny_scout):
    """(state, fp32 model, held-out sequences (bos first), fp32 reference logits [positions, V])."""
    state, _, held_out = trained_tiny_scout
    sequences = held_out_sequences(held_out)
    model = load_trained(state)
    return state, model, sequences, logits(model, sequences)


def test_trained_model_has_learned(setup, trained_tiny_scout):
    """The premise: the model predicts held-out text far better than chance (ln 512 = 6.24)."""
    _, _, sequences, ref = setup
    assert ref.shape[0] >= 256
    loss = next_token_loss(ref, sequences)
    assert loss < 4.3, f"held-out loss {loss:.3f} nats (measured 3.60-3.96); training info {trained_tiny_scout[1]}"


@pytest.mark.parametrize("fmt", ["e4m3fn", "e4m3fnuz"])
def test_fp8_kv_cache_alone_trained(setup, fmt):
    _, model, sequences, ref = setup
    kv = logits(model, sequences, kv_cache_dtype="fp8", fmt=fmt)
    assert torch.isfinite(kv).all()
    agree, kl = agreement_and_kl(ref, kv)
    assert agree >= 0.98, f"fp8 KV ({fmt}) top-1 agreement {agree:.4f} (measured >= 0.9856)"
    assert kl <= 0.05, f"fp8 KV ({fmt}) mean KL {kl:.2e} (measured <= 5.5e-4)"


@pytest.mark.parametrize("fmt", ["e4m3fn", "e4m3fnuz"])
def test_fp8_kv_error_is_rounding_alone(setup, monkeypatch, fmt):
    """Decoding one token per step, the fp8 cache's logits equal those of an fp32 cache holding K and V
    rounded to fp8 in fp32 with a scale per token and KV head (amax / fp8 max): the only error is the
    rounding itself (no low-precision intermediate, wrong scale axis, saturation or double rounding)."""
    _, model, sequences, _ = setup
    ids = sequences[0][:N_DECODE]
    kv = teacher_forced_logits(model, ids, kv_cache_dtype="fp8", fmt=fmt)
    dtype = torch_fp8_dtype(fmt)

    def rounded(x):  # [T, Hkv, D]
        s = x.abs().amax(-1, keepdim=True).clamp(min=1e-12) / torch.finfo(dtype).max
        return (x / s).to(dtype).float() * s

    write = KVCache.write
    monkeypatch.setattr(KVCache, "write", lambda self, layer, k, v, slots:
                        write(self, layer, rounded(k.float()), rounded(v.float()), slots))
    fake = teacher_forced_logits(model, ids)
    torch.testing.assert_close(kv, fake, rtol=0, atol=1e-4)


@pytest.mark.parametrize("fmt", ["e4m3fn", "e4m3fnuz"])
def test_fp8_weights_activations_trained(setup, fmt):
    state, _, sequences, ref = setup
    q = quantize_model(load_trained(state), QuantConfig(method="fp8", fp8_format=fmt))
    assert isinstance(q.model.layers[0].self_attn.q_proj, FP8Linear)
    assert isinstance(q.model.layers[0].feed_forward.experts, FP8Experts)
    test = logits(q, sequences)
    assert torch.isfinite(test).all()
    agree, kl = agreement_and_kl(ref, test)
    assert agree >= 0.95, f"w8a8 ({fmt}) top-1 agreement {agree:.4f} (measured >= 0.9734)"
    assert kl <= 0.05, f"w8a8 ({fmt}) mean KL {kl:.2e} (measured <= 1.0e-3)"
