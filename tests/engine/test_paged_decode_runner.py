"""The runner's static paged decode path gives the dense gather path's logits (fp32): several steps,
crossings of a small attention chunk, batches padded to a graph bucket, sequences leaving the batch."""
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


@pytest.mark.parametrize("graphs", [False, True])
def test_paged_decode_matches_dense(model, graphs):
    dense_cache, paged_cache = make_cache(model), make_cache(model)
    dense = ModelRunner(model, dense_cache, "cpu")
    backend = RecordingGraphs() if graphs else None
    paged = ModelRunner(model, paged_cache, "cpu", enforce_eager=not graphs, paged_decode=True, max_num_seqs=4,
                        max_model_len=64, graph_backend=backend)
    assert not dense.paged_decode and dense.graphs is None
    assert paged.paged_decode and (paged.graphs is not None) == graphs
    # 14 steps: every sequence crosses at least one chunk boundary (8); 3 live -> bucket 4, then 2, then 1
    ref, got = drive(model, [(dense, dense_cache), (paged, paged_cache)], PROMPTS, 14, drop_after={6: 1, 10: 0})
    for step, (a, b) in enumerate(zip(ref, got)):
        torch.testing.assert_close(b, a, atol=2e-5, rtol=2e-5, msg=lambda m: f"decode step {step}: {m}")
    assert ref[0].shape == (3, model.config.vocab_size) and ref[-1].shape == (1, model.config.vocab_size)
    # padding rows wrote only their row 0's bytes: both caches hold the same keys everywhere
    for kind in dense_cache.kinds:
        torch.testing.assert_close(paged_cache.k[kind], dense_cache.k[kind], atol=2e-5, rtol=2e-5)
        torch.testing.assert_close(paged_cache.v[kind], dense_cache.v[kind], atol=2e-5, rtol=2e-5)
    if graphs:  # one capture per bucket used (4, 2, 1), every other step a replay
        assert len(backend.captured) == 3 and sorted(paged.graphs.graphs) == [1, 2, 4]
        assert backend.replays == 14


def test_paged_decode_fp8_static_scales_matches_dense(model):
    L, H = model.config.num_hidden_layers, model.config.num_key_value_heads
    scales = {i: {"k": torch.full((H,), 0.004 + 0.001 * i), "v": torch.tensor(0.003)} for i in range(L)}
    dense_cache, paged_cache = make_cache(model, "fp8", scales), make_cache(model, "fp8", scales)
    dense = ModelRunner(model, dense_cache, "cpu")
    paged = ModelRunner(model, paged_cache, "cpu", paged_decode=True, max_num_seqs=4, max_model_len=64,
                        graph_backend=RecordingGraphs())
    assert paged.paged_decode
    ref, got = drive(model, [(dense, dense_cache), (paged, paged_cache)], PROMPTS[:2], 10)
    for a, b in zip(ref, got):
        torch.testing.assert_close(b, a, atol=1e-4, rtol=1e-4)


def test_per_token_fp8_keeps_the_gather_path(model):
    runner = ModelRunner(model, make_cache(model, "fp8"), "cpu", paged_decode=True, graph_backend=RecordingGraphs())
    assert not runner.paged_decode and runner.graphs is None


def test_table_wider_than_the_graph_is_a_clear_error(model):
    cache = make_cache(model)
    runner = ModelRunner(model, cache, "cpu", paged_decode=True, max_num_seqs=2, max_model_len=6,
                         graph_backend=RecordingGraphs())
    seq = SeqBlocks()
    cache.reserve(seq, 0, 8)
    runner.execute([StepItem(seq, list(range(10, 18)), 0)])  # prefill: eager gather path, any length
    cache.reserve(seq, 8, 9)
    with pytest.raises(ValueError, match="max_model_len"):
        runner.execute([StepItem(seq, [3], 8)])


def test_graphs_off_by_default_on_cpu_and_with_enforce_eager(model):
    assert ModelRunner(model, make_cache(model), "cpu").graphs is None
    assert ModelRunner(model, make_cache(model), "cpu", True, paged_decode=True,
                       graph_backend=RecordingGraphs()).graphs is None
    r = ModelRunner(model, make_cache(model), "cpu", paged_decode=True, max_num_seqs=20, graph_backend=RecordingGraphs())
    assert isinstance(r.graphs, DecodeGraphs) and r.graphs.buckets == [1, 2, 4, 8, 16, 24]
    # static tables: global spans max_position_embeddings capped by the pool; chunked one chunk
    assert r.graph_widths == {"global": 40, "chunked": 3}


def test_paged_decode_through_the_triton_kernel(model, monkeypatch):
    """The split-K Triton kernel (interpreter on CPU) behind the runner's static tables: padded
    columns, padded rows, chunk crossings."""
    pytest.importorskip("triton")
    from amd_llama4.engine import paged_decode
    from amd_llama4.ops.triton.kernels import interpreted

    if not torch.cuda.is_available() and not interpreted():
        pytest.skip("triton imported without TRITON_INTERPRET=1")
    real = paged_decode.ops.paged_attention_decode
    used = []

    def via_triton(*args, **kwargs):
        used.append(1)
        return real(*args, backend="triton", **kwargs)

    monkeypatch.setattr(paged_decode.ops, "paged_attention_decode", via_triton)
    dense_cache, paged_cache = make_cache(model), make_cache(model)
    dense = ModelRunner(model, dense_cache, "cpu")
    paged = ModelRunner(model, paged_cache, "cpu", paged_decode=True, max_num_seqs=4, max_model_len=64,
                        graph_backend=RecordingGraphs())
    ref, got = drive(model, [(dense, dense_cache), (paged, paged_cache)], PROMPTS, 5)
    for a, b in zip(ref, got):
        torch.testing.assert_close(b, a, atol=1e-4, rtol=1e-4)
    assert used


@pytest.mark.parametrize("moe", [False, True])
def test_captured_decode_forward_issues_no_host_sync(model, moe, monkeypatch):
    """What a graph records (runner._decode_forward over built inputs) reads nothing back to the host.
    MoE layers go through the Triton launchers (the GPU path; interpreter on CPU) when triton is here."""
    from tests.no_sync import no_host_sync

    from amd_llama4.engine.paged_decode import build_decode_inputs

    m = model
    if not moe:
        m = Llama4ForCausalLM(preset("tiny-scout", attention_chunk_size=8, moe_layers=[])).init_random(seed=1).eval()
    else:
        pytest.importorskip("triton")
        monkeypatch.setenv("AMD_LLAMA4_BACKEND", "triton")
    cache = make_cache(m)
    runner = ModelRunner(m, cache, "cpu", paged_decode=True, max_num_seqs=4, max_model_len=64,
                         graph_backend=RecordingGraphs())
    seqs = [SeqBlocks(), SeqBlocks()]
    for i, s in enumerate(seqs):  # 8 prompt tokens each, then a decode at 8: the first of a new chunk
        cache.reserve(s, 0, 8)
        runner.execute([StepItem(s, list(range(20 + i, 28 + i)), 0)])
        cache.reserve(s, 8, 9)
    x = build_decode_inputs(cache, seqs, [7, 9], [8, 8], 4, runner.graph_widths)  # 2 rows padded to 4
    with no_host_sync():
        hidden = runner._decode_forward(x)
    assert hidden.shape == (4, 1, m.config.hidden_size) and torch.isfinite(hidden).all()
