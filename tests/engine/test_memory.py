"""The KV memory model (engine/memory.py): block bytes, the pool split and its chunk rule, the
too-small start-up error, and the budget from (mocked) device memory, a given byte count or RAM."""
import logging
import math
import re

import pytest
import torch

from amd_llama4 import load_model
from amd_llama4.config import preset
from amd_llama4.engine import memory
from amd_llama4.engine.kv_cache import KVCache
from amd_llama4.engine.llm_engine import EngineArgs, LLMEngine

GiB = 2**30


def _cache_bytes(cache: KVCache) -> int:
    return sum(t.numel() * t.element_size()
               for d in (cache.k, cache.v, cache.token_scales) for t in d.values())


@pytest.mark.parametrize("kv_dtype,dtype", [("auto", torch.float32), ("auto", torch.bfloat16), ("fp8", torch.bfloat16)])
def test_block_bytes_equal_what_kvcache_allocates_per_pool(kv_dtype, dtype):
    cfg = preset("tiny-scout")  # 3 chunked layers + 1 global
    bs, blocks = 5, {"global": 7, "chunked": 3}
    bb = memory.kv_block_bytes(cfg, bs, dtype, kv_dtype, cfg.num_key_value_heads)
    elem = 1 if kv_dtype == "fp8" else dtype.itemsize
    per_layer = bs * cfg.num_key_value_heads * (2 * cfg.head_dim * elem + (8 if kv_dtype == "fp8" else 0))
    assert bb == {"global": per_layer, "chunked": 3 * per_layer}
    cache = KVCache(cfg, blocks, bs, dtype, "cpu", kv_dtype)
    assert cache.num_blocks == blocks
    assert {k: a.num_blocks for k, a in cache.allocators.items()} == blocks
    assert cache.k["global"].shape[1] == 7 * bs and cache.k["chunked"].shape[1] == 3 * bs
    assert _cache_bytes(cache) == sum(blocks[k] * bb[k] for k in blocks)


def test_kvcache_int_blocks_still_means_every_pool_and_rejects_an_empty_pool():
    cfg = preset("tiny-scout")
    assert KVCache(cfg, 9, 4, torch.float32, "cpu").num_blocks == {"global": 9, "chunked": 9}
    with pytest.raises(ValueError, match=r"chunked.*>= 1 block"):
        KVCache(cfg, {"global": 9}, 4, torch.float32, "cpu")


def test_rank_slice_block_bytes_scale_with_kv_heads():
    cfg = preset("scout")
    full = memory.kv_block_bytes(cfg, 16, torch.bfloat16, "auto", 8)
    rank = memory.kv_block_bytes(cfg, 16, torch.bfloat16, "auto", 2)  # tp=4: 2 of 8 KV heads
    assert full == {"global": 12 * 16 * 8 * 2 * 128 * 2, "chunked": 36 * 16 * 8 * 2 * 128 * 2}
    assert rank == {k: v // 4 for k, v in full.items()}


def _plan(budget, max_num_seqs=8, max_model_len=1000, bs=16, cfg=None):
    cfg = cfg or preset("tiny-scout")  # chunk 32
    bb = memory.kv_block_bytes(cfg, bs, torch.float32, "auto", cfg.num_key_value_heads)
    return memory.plan_kv_pools(cfg, budget, bb, bs, max_num_seqs, max_model_len), bb


def test_roomy_budget_chunked_pool_is_one_chunk_per_sequence_global_gets_the_rest():
    plan, bb = _plan(1 * GiB + 12345)
    chunked = 8 * (math.ceil(32 / 16) + 1)
    assert plan.blocks["chunked"] == chunked
    assert plan.blocks["global"] == (1 * GiB + 12345 - chunked * bb["chunked"]) // bb["global"]
    assert plan.bytes == sum(plan.blocks[k] * bb[k] for k in bb) <= 1 * GiB + 12345
    assert plan.bytes > 1 * GiB + 12345 - bb["global"]  # nothing usable left over
    assert plan.max_concurrent_tokens == plan.blocks["global"] * 16
    assert plan.max_concurrency == pytest.approx(min(plan.blocks["global"] / math.ceil(1000 / 16), 8.0))


def test_chunked_pool_never_exceeds_what_the_global_pool_can_match():
    # room for ~5 sequences of 1000 tokens but max_num_seqs=64: the chunked pool is sized for what
    # the global pool can run, not for 64 sequences
    plan, bb = _plan(5 * (63 * 8192 + 3 * 24576), max_num_seqs=64)
    assert plan.blocks["chunked"] < 64 * 3
    assert plan.blocks["chunked"] <= plan.blocks["global"]
    assert plan.blocks["global"] >= 63 and plan.bytes <= 5 * (63 * 8192 + 3 * 24576)


def test_short_max_model_len_caps_the_chunk_rule():
    plan, _ = _plan(1 * GiB, max_num_seqs=4, max_model_len=10)  # one block per sequence, below a chunk
    assert plan.blocks["chunked"] == 4 * 1


def test_budget_just_enough_for_one_sequence_and_one_byte_less_is_a_clear_error():
    cfg = preset("tiny-scout")
    bb = memory.kv_block_bytes(cfg, 16, torch.float32, "auto", cfg.num_key_value_heads)
    one = math.ceil(1000 / 16) * bb["global"] + 3 * bb["chunked"]
    plan = memory.plan_kv_pools(cfg, one, bb, 16, 8, 1000)
    assert plan.blocks == {"global": 63, "chunked": 3} and plan.max_concurrency == 1.0
    with pytest.raises(ValueError) as e:
        memory.plan_kv_pools(cfg, one - 1, bb, 16, 8, 1000)
    msg = str(e.value)
    for hint in ("max_model_len 1,000", "--max-model-len", "gpu_memory_utilization", "kv_cache_memory_bytes",
                 "fp8", "tensor_parallel_size"):
        assert hint in msg
    est = int(re.search(r"estimated maximum model length is ([\d,]+)", msg).group(1).replace(",", ""))
    assert 0 < est < 1000
    memory.plan_kv_pools(cfg, one - 1, bb, 16, 8, est)  # the estimate does fit ...
    with pytest.raises(ValueError):
        memory.plan_kv_pools(cfg, one - 1, bb, 16, 8, est + 16)  # ... and a block more does not


def test_model_without_chunked_layers_has_one_pool():
    cfg = preset("tiny-scout", attention_chunk_size=None)
    plan, bb = _plan(70 * 8192 * 4 + 100, cfg=cfg)  # 4 global layers, 63 blocks per sequence
    assert bb == {"global": 4 * 8192} and plan.blocks == {"global": 70}
    assert plan.max_concurrent_tokens == 70 * 16 and plan.max_concurrency == pytest.approx(70 / 63)


# -- the budget ------------------------------------------------------------------------------------------
class FakeCuda:
    """torch.cuda's memory functions for a device of `total` bytes; the profiled forward adds `act`
    bytes of activations to the weights' `weights`; `outside` bytes are used outside torch."""

    def __init__(self, monkeypatch, total, weights, act, outside):
        self.total, self.weights, self.act, self.outside = total, weights, act, outside
        self.profiled, self.peak_reset = [], False
        for name in ("synchronize", "empty_cache"):
            monkeypatch.setattr(torch.cuda, name, lambda *a, **k: None)
        monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", self._reset)
        monkeypatch.setattr(torch.cuda, "mem_get_info", lambda *a: (total - weights - outside, total))
        monkeypatch.setattr(torch.cuda, "memory_reserved", lambda *a: weights)
        monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda *a: weights + (act if self.profiled else 0))
        monkeypatch.setattr(memory, "_profile_forward", lambda m, n, rows, dev: self.profiled.append((n, rows)))

    def _reset(self, *a):
        self.peak_reset = True


def test_gpu_budget_is_utilization_of_total_minus_peak_and_memory_outside_torch(monkeypatch):
    fake = FakeCuda(monkeypatch, total=192 * GiB, weights=55 * GiB, act=3 * GiB, outside=GiB // 2)
    args = EngineArgs(model="tiny-scout", max_num_batched_tokens=8192, max_num_seqs=256)
    budget = memory.measure_kv_budget(None, args, torch.device("cuda", 0))
    assert budget == int(0.9 * 192 * GiB - 58 * GiB - GiB // 2)
    assert fake.peak_reset and fake.profiled == [(8192, 256)]  # one forward at max_num_batched_tokens
    args = EngineArgs(model="tiny-scout", gpu_memory_utilization=0.5)
    fake.profiled.clear()
    assert memory.measure_kv_budget(None, args, torch.device("cuda", 0)) == int(0.5 * 192 * GiB - 58 * GiB - GiB // 2)
    assert fake.profiled == [(2048, 64)]  # the scheduler's default token budget


def test_gpu_with_no_room_left_says_which_knob_to_turn(monkeypatch):
    FakeCuda(monkeypatch, total=80 * GiB, weights=70 * GiB, act=2 * GiB, outside=GiB)
    with pytest.raises(ValueError, match=r"no memory left for the KV cache.*Raise gpu_memory_utilization"):
        memory.measure_kv_budget(None, EngineArgs(model="tiny-scout"), torch.device("cuda", 0))


def test_kv_cache_memory_bytes_overrides_on_gpu_and_cpu(monkeypatch):
    fake = FakeCuda(monkeypatch, total=80 * GiB, weights=70 * GiB, act=2 * GiB, outside=GiB)
    args = EngineArgs(model="tiny-scout", kv_cache_memory_bytes=123_456_789)
    assert memory.measure_kv_budget(None, args, torch.device("cuda", 0)) == 123_456_789
    assert memory.measure_kv_budget(None, args, torch.device("cpu")) == 123_456_789
    assert fake.profiled == []  # nothing measured
    with pytest.raises(ValueError, match="kv_cache_memory_bytes"):
        EngineArgs(model="tiny-scout", kv_cache_memory_bytes=0)
    with pytest.raises(ValueError, match="gpu_memory_utilization"):
        EngineArgs(model="tiny-scout", gpu_memory_utilization=1.5)


def test_cpu_default_is_a_fraction_of_available_ram_capped_at_full_demand(monkeypatch):
    cfg = preset("tiny-scout")
    args = EngineArgs(model="tiny-scout", max_model_len=1000, max_num_seqs=8)
    model = type("M", (), {"config": cfg})()
    monkeypatch.setattr(memory, "available_ram", lambda: 10_000_000)
    assert memory.measure_kv_budget(model, args, torch.device("cpu")) == int(memory.CPU_KV_FRACTION * 10_000_000)
    monkeypatch.setattr(memory, "available_ram", lambda: 100 * GiB)
    bb = memory.kv_block_bytes(cfg, 16, torch.float32, "auto", cfg.num_key_value_heads)
    full = 8 * (math.ceil(1000 / 16) * bb["global"] + 3 * bb["chunked"])  # 8 sequences of 1000 tokens
    assert memory.measure_kv_budget(model, args, torch.device("cpu")) == full


def test_available_ram_reads_the_machine():
    ram = memory.available_ram()
    assert 64 * 2**20 < ram < 64 * 2**50


# -- the engine ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny-scout")


def test_engine_sizes_pools_from_the_budget_and_logs_them(tiny, caplog):
    budget = 3_000_000
    with caplog.at_level(logging.INFO, logger="amd_llama4"):
        eng = LLMEngine(EngineArgs(model="tiny-scout", kv_cache_memory_bytes=budget, max_model_len=1000,
                                   max_num_seqs=4, block_size=8), model=tiny)
    plan = eng.kv_plan
    assert plan.blocks["chunked"] == 4 * (32 // 8 + 1)
    assert eng.cache.num_blocks == plan.blocks and eng.stats()["kv_pool_blocks"] == plan.blocks
    assert _cache_bytes(eng.cache) == plan.bytes <= budget
    assert eng.stats()["kv_blocks_total"] == sum(plan.blocks.values())
    text = caplog.text
    assert f"global {plan.blocks['global']:,} blocks" in text and f"chunked {plan.blocks['chunked']:,} blocks" in text
    assert f"max concurrent tokens {plan.max_concurrent_tokens:,}" in text


def test_engine_num_kv_blocks_hook_bypasses_the_memory_model(tiny, monkeypatch):
    monkeypatch.setattr(memory, "measure_kv_budget", lambda *a: pytest.fail("measured despite num_kv_blocks"))
    eng = LLMEngine(EngineArgs(model="tiny-scout", num_kv_blocks={"global": 11, "chunked": 5}), model=tiny)
    assert eng.kv_plan is None and eng.cache.num_blocks == {"global": 11, "chunked": 5}


def test_engine_start_up_error_when_max_model_len_cannot_fit(tiny):
    with pytest.raises(ValueError, match=r"max_model_len 4,096 needs .*Lower max_model_len"):
        LLMEngine(EngineArgs(model="tiny-scout", kv_cache_memory_bytes=200_000), model=tiny)
