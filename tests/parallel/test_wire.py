"""The tensor-parallel step message: block tables travel as changes (a decode step's message does
not grow with the context) and the workers' mirror rebuilds exactly the driver's tables, across
attention-chunk boundaries, preemptions and finished requests."""
import pickle

import torch

from amd_llama4 import Llama4Config, SamplingParams
from amd_llama4.engine.kv_cache import KVCache
from amd_llama4.engine.sampler import SamplingState
from amd_llama4.engine.scheduler import Scheduler, Sequence
from amd_llama4.engine.tp.wire import StepEncoder, StepMirror

CFG = Llama4Config(vocab_size=97, hidden_size=48, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                   intermediate_size=32, intermediate_size_mlp=64, num_hidden_layers=4, num_local_experts=4,
                   num_experts_per_tok=2, interleave_moe_layer_step=2, attention_chunk_size=8,
                   rope_scaling=None, max_position_embeddings=4096)


def make_seq(n_prompt, seed=None):
    g = torch.Generator().manual_seed(n_prompt)
    ids = torch.randint(3, 97, (n_prompt,), generator=g).tolist()
    st = SamplingState(SamplingParams(temperature=0.7, seed=seed, max_tokens=None), ids, [2])
    return Sequence(f"r{n_prompt}", list(ids), n_prompt, st)


def run_steps(sched, seqs, steps, enc, mirror, on_msg=None):
    """Drive the scheduler; after each step the mirror must hold the driver's tables."""
    live = {s.arrival: s for s in seqs}
    for _ in range(steps):
        step = sched.schedule()
        for s, _why in step.failed:
            live.pop(s.arrival)
        if not step.seqs:
            break
        sample = [s.num_computed + n == len(s.token_ids) for s, n in zip(step.seqs, step.num_tokens)]
        msg = enc.encode(step.seqs, step.num_tokens, sample, [s.state for s in step.seqs], set(live))
        blob = pickle.dumps(msg)
        items, rows, states = mirror.apply(pickle.loads(blob))
        if on_msg is not None:
            on_msg(step, blob)
        for s, n, it in zip(step.seqs, step.num_tokens, items):
            assert it.blocks.tables == {k: list(v) for k, v in s.blocks.tables.items()}, s.request_id
            assert it.blocks.chunk_start == s.blocks.chunk_start
            assert it.tokens == s.token_ids[s.num_computed:s.num_computed + n] and it.start == s.num_computed
        assert rows == [i for i, x in enumerate(sample) if x]
        for s, n, smp in zip(step.seqs, step.num_tokens, sample):
            s.num_computed += n
            if smp:
                s.token_ids.append(len(s.token_ids) % 90 + 3)
                s.state.append(s.token_ids[-1])
        for st, (s, smp) in zip(states, [(s, x) for s, x in zip(step.seqs, sample) if x]):
            assert st.params == s.state.params and st.prompt_token_ids == s.state.prompt_token_ids
            st.append(s.token_ids[-1])  # rank 0 appends what it sampled
            assert st.output_token_ids == s.state.output_token_ids
    return live


def test_decode_message_does_not_grow_with_context():
    cache = KVCache(CFG, {"global": 200, "chunked": 8}, 4, torch.float32, "cpu", allocate=False)
    sched = Scheduler(cache, 4, 64)
    seq = make_seq(12)
    sched.add(seq)
    sizes = []

    def record(step, blob):
        if not step.is_prefill:
            sizes.append((step.seqs[0].num_computed, len(blob)))

    run_steps(sched, [seq], 600, StepEncoder(), StepMirror(), record)
    assert len(seq.blocks.tables["global"]) > 120  # the context grew to > 480 tokens
    early = max(n for pos, n in sizes if pos < 60)
    late = max(n for pos, n in sizes if pos > 400)
    # the full global table alone would add > 240 bytes of pickled ints
    assert late <= early + 16, (early, late)


def test_mirror_follows_chunks_preemption_and_finish():
    # few global blocks: sequences preempt each other and come back with new tables
    cache = KVCache(CFG, {"global": 14, "chunked": 12}, 4, torch.float32, "cpu", allocate=False)
    sched = Scheduler(cache, 3, 16)
    seqs = [make_seq(n, seed=n) for n in (5, 19, 9)]
    for s in seqs:
        sched.add(s)
    enc, mirror = StepEncoder(), StepMirror()
    run_steps(sched, seqs, 40, enc, mirror)
    assert sum(s.num_preemptions for s in seqs) > 0
    # finished: the driver drops one; the next message tells the workers to forget it
    gone = seqs[0]
    sched.finish(gone)
    rest = [s for s in seqs[1:] if s in sched.running or s in sched.waiting]
    run_steps(sched, rest, 3, enc, mirror)
    assert gone.arrival not in mirror.blocks and gone.arrival not in mirror.sampling
    assert set(mirror.blocks) <= {s.arrival for s in rest}
