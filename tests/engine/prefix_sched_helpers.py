"""Drive the Scheduler without a model (block bookkeeping only): each step 'computes' the scheduled
tokens and appends a made-up token when a sequence's known ids are all computed."""
from __future__ import annotations

import torch

from amd_llama4 import Llama4Config
from amd_llama4.engine.kv_cache import KVCache
from amd_llama4.engine.scheduler import Scheduler, Sequence

# 4 layers: 3 chunked (RoPE) + 1 global (NoPE), attention chunk 32
CFG = Llama4Config(vocab_size=97, hidden_size=48, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                   intermediate_size=32, intermediate_size_mlp=64, num_hidden_layers=4, num_local_experts=4,
                   num_experts_per_tok=2, interleave_moe_layer_step=2, attention_chunk_size=32,
                   rope_scaling=None, max_position_embeddings=4096)


def make_sched(blocks, block_size=8, max_num_seqs=8, max_tokens=64, caching=True, cfg=CFG):
    cache = KVCache(cfg, blocks, block_size, torch.float32, "cpu", allocate=False)
    return Scheduler(cache, max_num_seqs, max_tokens, enable_prefix_caching=caching)


def tokens(n, seed=0):
    return torch.randint(5, 97, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def add(sched, ids, max_new, rid=None, parent=None):
    seq = Sequence(rid or f"r{len(sched.waiting) + len(sched.running)}-{len(ids)}", list(ids), len(ids),
                   state={"max_new": max_new}, parent=parent)
    sched.add(seq)
    return seq


def step(sched):
    """One step; -> the ScheduledStep (its seqs/num_tokens as scheduled)."""
    st = sched.schedule()
    for seq, n in zip(st.seqs, st.num_tokens):
        # a piece never spans two attention chunks
        c = sched.cache.chunk
        assert seq.num_computed // c == (seq.num_computed + n - 1) // c, (seq.request_id, seq.num_computed, n)
        seq.num_computed += n
        if seq.num_computed == len(seq.token_ids):
            seq.token_ids.append(len(seq.token_ids) % 90 + 5)
            if len(seq.token_ids) - seq.num_prompt >= seq.state["max_new"]:
                sched.finish(seq)
    return st


def run(sched, max_steps=10_000, on_step=None):
    steps = 0
    while sched.has_work() and steps < max_steps:
        st = step(sched)
        steps += 1
        if on_step:
            on_step(st)
    assert not sched.has_work(), "scheduler did not drain"
    return steps
