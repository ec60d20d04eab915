"""The runner's graph-captured decode step (static shapes: rows padded to a bucket, tables to a fixed
width) gives the eager ragged step's logits: several steps, crossings of a small attention chunk,
sequences leaving the batch, fp8 KV with static and per-token scales."""
import pytest
import torch

from amd_llama4.config import preset
from amd_llama4.engine.graphs import DecodeGraphs
from amd_llama4.engine.block_manager import SeqBlocks
from amd_llama4.engine.runner import ModelRunner, StepItem
from amd_llama4.model.llama4 import Llama4ForCausalLM

from paged_decode_helpers import PROMPTS, RecordingGraphs, drive, make_cache


@pytest.fixture(scope="module")
def model():
    # chunk 8 with block 3: chunks end mid-block; 4 layers = 3 chunked (RoPE) + 1 global (NoPE)
    cfg = preset("tiny-scout", attention_chunk_size=8, num_local_experts=4)
    return Llama4ForCausalLM(cfg).init_random(seed=3, std=0.08).eval()


def _static_scales(model):
    L, H = model.config.num_hidden_layers, model.config.num_key_value_heads
    return {i: {"k": torch.full((H,), 0.004 + 0.001 * i), "v": torch.tensor(0.003)} for i in range(L)}


@pytest.mark.parametrize("kv", ["auto", "fp8-static", "fp8-per-token"])
def test_graph_decode_matches_eager(model, kv):
    dtype, scales = ("auto", None) if kv == "auto" else ("fp8", _static_scales(model) if kv == "fp8-static" else None)
    eager_cache, graph_cache = make_cache(model, dtype, scales), make_cache(model, dtype, scales)
    eager = ModelRunner(model, eager_cache, "cpu", True)
    backend = RecordingGraphs()
    graphed = ModelRunner(model, graph_cache, "cpu", max_num_seqs=4, max_model_len=64, graph_backend=backend)
    assert eager.graphs is None and graphed.graphs is not None
    # 14 steps: every sequence crosses at least one chunk boundary (8); 3 live -> bucket 4, then 2, then 1
    ref, got = drive(model, [(eager, eager_cache), (graphed, graph_cache)], PROMPTS, 14, drop_after={6: 1, 10: 0})
    for step, (a, b) in enumerate(zip(ref, got)):
        torch.testing.assert_close(b, a, atol=2e-5, rtol=2e-5, msg=lambda m: f"decode step {step}: {m}")
    assert ref[0].shape == (3, model.config.vocab_size) and ref[-1].shape == (1, model.config.vocab_size)
    # padding rows wrote only their row 0's bytes: both caches hold the same keys (and scales) everywhere
    for kind in eager_cache.kinds:
        for name in ("k", "v", "token_scales"):
            a, b = getattr(graph_cache, name)[kind], getattr(eager_cache, name)[kind]
            if a.dtype != torch.float32:
                a, b = a.float(), b.float()
            torch.testing.assert_close(a, b, atol=2e-5, rtol=2e-5)
    # one capture per bucket used (4, 2, 1), every other step a replay
    assert len(backend.captured) == 3 and sorted(graphed.graphs.graphs) == [1, 2, 4]
    assert backend.replays == 14


def test_table_wider_than_the_graph_is_a_clear_error(model):
    cache = make_cache(model)
    runner = ModelRunner(model, cache, "cpu", max_num_seqs=2, max_model_len=6, graph_backend=RecordingGraphs())
    seq = SeqBlocks()
    cache.reserve(seq, 0, 8)
    runner.execute([StepItem(seq, list(range(10, 18)), 0)])  # prefill: eager ragged step, any length
    cache.reserve(seq, 8, 9)
    with pytest.raises(ValueError, match="max_model_len"):
        runner.execute([StepItem(seq, [3], 8)])


def test_graphs_off_by_default_on_cpu_and_with_enforce_eager(model):
    assert ModelRunner(model, make_cache(model), "cpu").graphs is None
    assert ModelRunner(model, make_cache(model), "cpu", True, graph_backend=RecordingGraphs()).graphs is None
    r = ModelRunner(model, make_cache(model), "cpu", max_num_seqs=20, graph_backend=RecordingGraphs())
    assert isinstance(r.graphs, DecodeGraphs) and r.graphs.buckets == [1, 2, 4, 8, 16, 24]
    # static tables: global spans max_position_embeddings capped by the pool; chunked one chunk
    assert r.graph_widths == {"global": 40, "chunked": 3}


def test_graph_decode_through_the_triton_kernel(model, monkeypatch):
    """The Triton paged-attention kernel (interpreter on CPU) behind the runner's static tables: padded
    columns, padded rows, chunk crossings."""
    pytest.importorskip("triton")
    from amd_llama4.engine import step_inputs
    from amd_llama4.ops import dispatch
    from amd_llama4.ops.triton.kernels import interpreted

    if not torch.cuda.is_available() and not interpreted():
        pytest.skip("triton imported without TRITON_INTERPRET=1")
    if "triton" not in dispatch.available("paged_attention"):
        pytest.skip("no Triton paged_attention registered")
    real = step_inputs.paged_attention
    used = []

    def via_triton(*args, **kwargs):
        used.append(1)
        return real(*args, backend="triton", **kwargs)

    eager_cache, graph_cache = make_cache(model), make_cache(model)
    eager = ModelRunner(model, eager_cache, "cpu", True)
    graphed = ModelRunner(model, graph_cache, "cpu", max_num_seqs=4, max_model_len=64, graph_backend=RecordingGraphs())
    ref = drive(model, [(eager, eager_cache)], PROMPTS, 5)[0]
    monkeypatch.setattr(step_inputs, "paged_attention", via_triton)
    got = drive(model, [(graphed, graph_cache)], PROMPTS, 5)[0]
    for a, b in zip(ref, got):
        torch.testing.assert_close(b, a, atol=1e-4, rtol=1e-4)
    assert used


@pytest.mark.parametrize("moe", [False, True])
def test_captured_decode_forward_issues_no_host_sync(model, moe, monkeypatch):
    """What a graph records (runner._forward over a padded decode step) reads nothing back to the host.
    MoE layers go through the Triton launchers (the GPU path; interpreter on CPU) when triton is here."""
    from tests.no_sync import no_host_sync

    from amd_llama4.engine.step_inputs import build_step_inputs

    m = model
    if not moe:
        m = Llama4ForCausalLM(preset("tiny-scout", attention_chunk_size=8, moe_layers=[])).init_random(seed=1).eval()
    else:
        pytest.importorskip("triton")
        monkeypatch.setenv("AMD_LLAMA4_BACKEND", "triton")
    cache = make_cache(m)
    runner = ModelRunner(m, cache, "cpu", max_num_seqs=4, max_model_len=64, graph_backend=RecordingGraphs())
    seqs = [SeqBlocks(), SeqBlocks()]
    for i, s in enumerate(seqs):  # 8 prompt tokens each, then a decode at 8: the first of a new chunk
        cache.reserve(s, 0, 8)
        runner.execute([StepItem(s, list(range(20 + i, 28 + i)), 0)])
        cache.reserve(s, 8, 9)
    x = build_step_inputs(cache, seqs, [[7], [9]], [8, 8], pad_to=4, widths=runner.graph_widths)  # 2 rows -> 4
    with no_host_sync():
        hidden = runner._forward(x)
    assert hidden.shape == (4, m.config.hidden_size) and torch.isfinite(hidden).all()
