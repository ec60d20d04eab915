"""int4 (w4a16, online round-to-nearest) accuracy on the tiny Llama 4 TRAINED on text that the FP8 accuracy
tests use (tests/quant/tiny_trained.py: tiny-scout with head_dim 128), teacher-forced through the paged
cache on the same 4 held-out sequences of 2048 positions, against the fp32 model.

What int4 covers there: group 128 quantises q/k/v/o (in 128 / 512) and the shared experts' gate/up
(in 128); the routed experts (intermediate 96) and the down projections (in 96 / 192) are no multiple of
128 and stay in high precision (quant/int4.py keeps them, as it must: kernels take whole groups).
Group 32 quantises every projection and the routed experts.
Measured (training seed 0; 8192 positions): group 128 top-1 agreement 0.9675, KL 1.39e-3; group 32
(everything int4) 0.9668, KL 1.22e-3 (FP8 w8a8 on the same model: 0.9734-0.9817). Asserted: the issue's
aim, top-1 agreement >= 0.95, and KL <= 0.05 for both. The evaluation itself costs ~2 min of wall time on
a loaded 2-core machine (~25 s idle) on top of the shared training fixture: marked slow.
"""
import pytest
import torch

from amd_llama4.config import QuantConfig
from amd_llama4.model.llama4 import Linear
from amd_llama4.quant.int4 import Int4Experts, Int4Linear, quantize_model_int4
from amd_llama4.tools.quant_accuracy import agreement_and_kl
from tests.quant.tiny_trained import held_out_sequences, load_trained, logits


@pytest.mark.slow
def test_int4_online_top1_agreement_trained(trained_tiny_scout):
    state, _, held_out = trained_tiny_scout
    sequences = held_out_sequences(held_out)
    ref = logits(load_trained(state), sequences)
    for group, agree_min, covered in ((128, 0.95, ("q_proj", "shared_gate")), (32, 0.95, ("q_proj", "experts"))):
        model = quantize_model_int4(load_trained(state), QuantConfig(method="int4", group_size=group))
        layer = model.model.layers[0]
        assert isinstance(layer.self_attn.q_proj, Int4Linear)
        assert isinstance(layer.feed_forward.shared_expert.gate_proj, Int4Linear)
        if group == 128:  # widths 96 / 192 are no multiple of 128: kept, not mangled
            assert type(layer.feed_forward.shared_expert.down_proj) is Linear
            assert not isinstance(layer.feed_forward.experts, Int4Experts)
        else:
            assert isinstance(layer.feed_forward.experts, Int4Experts)
            assert isinstance(layer.feed_forward.shared_expert.down_proj, Int4Linear)
        test = logits(model, sequences)
        assert torch.isfinite(test).all()
        agree, kl = agreement_and_kl(ref, test)
        print(f"int4 group {group}: top-1 agreement {agree:.4f}, KL {kl:.2e}")
        assert agree >= agree_min, f"int4 group {group} top-1 agreement {agree:.4f}"
        assert kl <= 0.05, f"int4 group {group} mean KL {kl:.2e}"
