"""Images under tensor parallelism (CPU, gloo, Ray): every rank holds the replicated vision tower.
mm_encoder_tp_mode="weights" (default): each rank encodes a request's images itself from the pixel
values sent once in the step message; "data": ranks encode disjoint shares of a step's images and
all_gather the features (engine/mm_encoder_dp.py). Greedy tokens equal tp=1 (and so transformers,
tests/engine/test_multimodal_engine.py)."""
import pytest
import torch

from amd_llama4 import LLM, SamplingParams
from amd_llama4.engine.llm_engine import EngineArgs
from amd_llama4.engine.mm_encoder_dp import DataParallelEncoder, pad_rows, share_rows, shares, unshare
from amd_llama4.engine.mm_inputs import encode_images
from tests.engine import mm_engine_helpers as h
from tests.parallel import mm_encoder_dp_helpers as dp

SP = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True)


@pytest.mark.slow
def test_tp2_images_equal_single(ray_cluster, tmp_path):
    h.save_checkpoint(tmp_path, seed=11)
    imgs = [h.make_image(112, 112, seed=1), h.make_image(40, 90, seed=2)]
    prompts = [{"prompt": "a <|image|> b <|image|>", "multi_modal_data": {"image": imgs}},
               {"prompt": "c <|image|>", "multi_modal_data": {"image": imgs[1]}}, "text only"]
    # a small token budget: image tokens split across prefill pieces on every rank
    kw = dict(num_kv_blocks=64, block_size=4, max_num_batched_tokens=8, max_num_seqs=4)
    want = [o.outputs[0].token_ids for o in LLM(str(tmp_path), **kw).generate(prompts, SP)]
    llm = LLM(str(tmp_path), tensor_parallel_size=2, **kw)
    try:
        assert [o.outputs[0].token_ids for o in llm.generate(prompts, SP)] == want
        assert all(llm.engine.runner.call("has_vision"))
    finally:
        llm.shutdown()


@pytest.mark.slow
def test_tp2_data_mode_equal_single(ray_cluster, tmp_path):
    """Data mode: 3 requests' distinct images in the first step (uneven shares 2 + 1), then a later
    request's image alone (rank 1 encodes nothing); greedy tokens equal tp=1. (The test model's
    attention chunk is 16 tokens and a prefill piece stays in one chunk: one step holds several
    images only across requests.)"""
    h.save_checkpoint(tmp_path, seed=12)
    imgs = [h.make_image(30, 30, seed=3), h.make_image(40, 90, seed=4), h.make_image(50, 20, seed=5),
            h.make_image(112, 112, seed=6)]
    prompts = [{"prompt": f"<|image|> {w}", "multi_modal_data": {"image": im}} for w, im in zip("abc", imgs)]
    # text first: its image is reached in a later step, and then split across two pieces
    prompts += [{"prompt": "d " * 40 + "<|image|>", "multi_modal_data": {"image": [imgs[3]]}}, "text only"]
    kw = dict(num_kv_blocks=128, block_size=4, max_num_batched_tokens=96, max_num_seqs=4)
    want = [o.outputs[0].token_ids for o in LLM(str(tmp_path), **kw).generate(prompts, SP)]
    llm = LLM(str(tmp_path), tensor_parallel_size=2, mm_encoder_tp_mode="data", **kw)
    try:
        assert [o.outputs[0].token_ids for o in llm.generate(prompts, SP)] == want
        stats = llm.engine.runner.call("mm_encoder_stats")
    finally:
        llm.shutdown()
    assert stats[0]["calls"] == stats[1]["calls"] and sorted(stats[0]["calls"]) == [1, 3], stats
    assert [s["encoded"] for s in stats] == [4, 4], stats  # every rank cached every image
    assert [s["local"] for s in stats] == [3, 1], stats  # 2 of 3 + the lone one on rank 0, 1 of 3 on rank 1


def test_mm_encoder_tp_mode_validated():
    with pytest.raises(ValueError, match="mm_encoder_tp_mode 'tensor'"):
        EngineArgs(model="tiny", mm_encoder_tp_mode="tensor")
    assert EngineArgs(model="tiny").mm_encoder_tp_mode == "weights"


@pytest.mark.parametrize("n,world", [(0, 2), (1, 2), (3, 2), (7, 3), (4, 1)])
def test_shares_split_images_round_robin(n, world):
    got = shares(n, world)
    assert len(got) == world
    assert sorted(i for s in got for i in s) == list(range(n))  # disjoint, complete
    assert all(i % world == r for r, s in enumerate(got) for i in s)
    with pytest.raises(ValueError, match="world size 0"):
        shares(n, 0)


def test_pad_and_unshare_restore_order():
    tokens = [3, 6, 15, 9]  # rows per image; world 3: ranks hold [0, 3], [1], [2]
    world = 3
    assert share_rows(tokens, world) == [12, 6, 15]
    feats = [torch.randn(t, 5) for t in tokens]
    blocks = [pad_rows(torch.cat([feats[i] for i in s]), 15) for s in shares(len(tokens), world)]
    assert [b.shape[0] for b in blocks] == [15, 15, 15]
    assert torch.count_nonzero(blocks[1][6:]) == 0  # padding is zeros
    out = unshare(blocks, tokens)
    for got, want in zip(out, feats):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    with pytest.raises(ValueError, match="exceed the padded size 2"):
        pad_rows(torch.zeros(3, 5), 2)
    with pytest.raises(RuntimeError, match="rank 2 sent 14 rows"):
        unshare([blocks[0], blocks[1], blocks[2][:14]], tokens)


def test_single_rank_encoder_equals_one_call():
    model, items = dp.FakeVisionModel(), dp.images([2, 1, 3])
    got = DataParallelEncoder(0, 1)(items, model)
    for g, w in zip(got, encode_images(items, dp.FakeVisionModel())):
        torch.testing.assert_close(g, w, rtol=0, atol=0)
    with pytest.raises(ValueError, match="rank 2 not in"):
        DataParallelEncoder(2, 2)


def test_gloo_data_parallel_encode_equals_single(tmp_path):
    """Two gloo processes (no Ray): every rank ends with every image's features, equal to one tower
    call over all images, and each rank's tower saw only its share's tiles."""
    import torch.multiprocessing as mp

    from amd_llama4.engine.tp.executor import free_port

    mp.spawn(dp.gloo_rank, args=(2, f"tcp://127.0.0.1:{free_port()}", str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for seed, (tiles, dtype) in enumerate(dp.CASES):
        want = encode_images(dp.images(tiles, seed), dp.FakeVisionModel(dtype))
        for r, res in enumerate(ranks):
            got = res["results"][seed]
            assert len(got["feats"]) == len(tiles)
            for g, w in zip(got["feats"], want):
                assert g.dtype == dtype
                torch.testing.assert_close(g, w)  # rows of a tile do not depend on the batch
            assert got["tiles_seen"] == sum(tiles[r::2]), (seed, r)
    assert ranks[0]["calls"] == ranks[1]["calls"] == [len(t) for t, _ in dp.CASES]
    assert [r["num_local"] for r in ranks] == [sum(len(t[0::2]) for t, _ in dp.CASES),
                                               sum(len(t[1::2]) for t, _ in dp.CASES)]


def test_mm_encoder_tp_mode_flag_and_serve_arg():
    import argparse

    from amd_llama4.commands._engine_flags import add_engine_flags, engine_kwargs

    p = argparse.ArgumentParser()
    add_engine_flags(p)
    assert engine_kwargs(p.parse_args(["--mm-encoder-tp-mode", "data"]))["mm_encoder_tp_mode"] == "data"
    assert "mm_encoder_tp_mode" not in engine_kwargs(p.parse_args([]))  # unset: EngineArgs' default
    with pytest.raises(SystemExit):
        p.parse_args(["--mm-encoder-tp-mode", "tensor"])
    pytest.importorskip("ray")
    from amd_llama4.serve.deployment import split_args

    engine_args, _ = split_args({"model": "tiny", "mm_encoder_tp_mode": "data", "tensor_parallel_size": "2"})
    assert engine_args == {"model": "tiny", "mm_encoder_tp_mode": "data", "tensor_parallel_size": 2}
