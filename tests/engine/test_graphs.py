"""Decode graphs: bucket choice, padding, one set of static buffers for every bucket, lazy capture after
a warm-up; on a GPU, real torch.cuda graphs replaying the decode step with the eager step's logits."""
import pytest
import torch

from amd_llama4.engine.graphs import DecodeGraphs, batch_buckets
from amd_llama4.engine.step_inputs import StepInputs

from paged_decode_helpers import PROMPTS, RecordingGraphs, drive


def test_batch_buckets():
    assert batch_buckets(1) == [1]
    assert batch_buckets(3) == [1, 2, 4]
    assert batch_buckets(8) == [1, 2, 4, 8]
    assert batch_buckets(33) == [1, 2, 4, 8, 16, 24, 32, 40]
    assert batch_buckets(256)[-3:] == [240, 248, 256]
    with pytest.raises(ValueError, match="max_num_seqs"):
        batch_buckets(0)


def _inputs(batch, widths, fill):
    x = StepInputs.empty(["global", "chunked"], batch, widths, torch.device("cpu"))
    for t in x._fields():
        t.fill_(fill)
    return x


def _graphs(calls):
    widths = {"global": 5, "chunked": 2}

    def forward(x):  # a step whose output depends on every input buffer
        calls.append(x.batch)
        out = (x.ids.float() + x.positions + x.q_pos + x.src + x.last + x.cu_seqlens[1:])[:, None]
        for d in (x.tables, x.seq_lens, x.first_pos, x.slots):
            for t in d.values():
                out = out + t.reshape(x.batch, -1).sum(1, keepdim=True)
        return out  # [B, 1]

    backend = RecordingGraphs()
    buffers = StepInputs.empty(["global", "chunked"], 8, widths, torch.device("cpu"))
    return DecodeGraphs(forward, buffers, batch_buckets(8), backend), backend, widths


def test_bucket_choice_capture_and_replay_from_static_buffers():
    calls = []
    g, backend, widths = _graphs(calls)
    assert [g.bucket_for(n) for n in (1, 2, 3, 5, 8, 9)] == [1, 2, 4, 8, 8, None]
    # every input scalar of a row adds once: 6 plain fields, tables 5 + 2 wide, 3 more dicts x 2 kinds
    per_row = 6 + (5 + 2) + 3 * 2
    out = g.run(_inputs(4, widths, 1))
    assert calls == [4, 4, 4] and backend.replays == 1  # warm-up, capture, replay
    torch.testing.assert_close(out, torch.full((4, 1), 1.0 * per_row))
    out2 = g.run(_inputs(4, widths, 3))
    assert calls == [4, 4, 4, 4] and len(backend.captured) == 1  # replayed, not recaptured
    assert out2.data_ptr() == out.data_ptr()  # the static output
    torch.testing.assert_close(out2, torch.full((4, 1), 3.0 * per_row))
    g.run(_inputs(2, widths, 2))
    assert len(backend.captured) == 2 and sorted(g.graphs) == [2, 4]
    # every bucket's graph reads views of the one buffer set: rows 0.. of the same storage
    assert g.buffers.rows(2).ids.data_ptr() == g.buffers.rows(4).ids.data_ptr() == g.buffers.ids.data_ptr()
    assert g.buffers.tables["global"][:2].eq(2).all() and g.buffers.tables["global"][2:4].eq(3).all()


def test_run_rejects_non_bucket_batches_and_wrong_widths():
    g, _, widths = _graphs([])
    with pytest.raises(ValueError, match="not a bucket"):
        g.run(_inputs(3, widths, 1))
    with pytest.raises(ValueError, match="shape"):
        g.run(_inputs(4, {"global": 4, "chunked": 2}, 1))
    with pytest.raises(ValueError, match="largest bucket"):
        DecodeGraphs(lambda x: x.ids, StepInputs.empty(["global"], 4, {"global": 1}, torch.device("cpu")),
                     [1, 2, 4, 8], RecordingGraphs())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a ROCm or CUDA GPU")
@pytest.mark.parametrize("moe", [False, True])
def test_cuda_graphs_match_eager_on_gpu(moe):
    from amd_llama4.config import preset
    from amd_llama4.engine.kv_cache import KVCache
    from amd_llama4.engine.runner import ModelRunner
    from amd_llama4.model.llama4 import Llama4ForCausalLM

    cfg = preset("tiny-scout", attention_chunk_size=8, num_local_experts=4, **({} if moe else {"moe_layers": []}))
    model = Llama4ForCausalLM(cfg).init_random(seed=3, std=0.08).to("cuda", torch.bfloat16).eval()
    caches = [KVCache(cfg, 40, 16, torch.bfloat16, "cuda") for _ in range(2)]
    runners = [ModelRunner(model, caches[0], "cuda", enforce_eager=True, max_num_seqs=4, max_model_len=128),
               ModelRunner(model, caches[1], "cuda", max_num_seqs=4, max_model_len=128)]
    assert runners[0].graphs is None and runners[1].graphs is not None
    eager, graphed = drive(model, list(zip(runners, caches)), PROMPTS, 12, drop_after={6: 1})
    for a, b in zip(eager, graphed):
        torch.testing.assert_close(b, a, atol=1e-3, rtol=1e-3)  # same kernels, replayed
    assert sorted(runners[1].graphs.graphs) == [2, 4]
