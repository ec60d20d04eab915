"""Automatic prefix caching, block side: keys chained over the prefix, shared blocks held once with
reference counts, LRU eviction of unreferenced cached blocks, Llama 4's chunk rule for the chunked
pool, and the counters. Engine-level equality (outputs with caching on == off): test_prefix_cache_engine.py."""
import pytest

from amd_llama4.engine.block_manager import BlockAllocator
from amd_llama4.engine.prefix_cache import hash_block
from tests.engine.prefix_sched_helpers import CFG, add, make_sched, run, step, tokens


def _prefill(sched, seq):
    """Steps until seq's prompt is computed (its first token sampled)."""
    while seq.num_computed < seq.num_prompt:
        step(sched)


def _used(sched):
    return {k: a.num_blocks - a.num_free for k, a in sched.cache.allocators.items()}


def test_keys_chain_over_the_prefix_and_extra_key():
    a, b = [1, 2, 3, 4], [5, 6, 7, 8]
    k_a = hash_block(None, a)
    assert hash_block(None, a) == k_a and len(k_a) == 16
    assert hash_block(k_a, b) != hash_block(hash_block(None, [9, 2, 3, 4]), b)  # same block, other prefix
    assert hash_block(None, a, extra=b"img0") != k_a != hash_block(None, a[::-1])
    assert hash_block(None, a, extra=b"img0") != hash_block(None, a, extra=b"img1")


def test_second_identical_prompt_allocates_only_its_own_blocks():
    sched = make_sched({"global": 64, "chunked": 32}, block_size=8)
    ids = tokens(50)  # 6 full blocks + 2 tokens; positions 32..49 in the second chunk
    a = add(sched, ids, max_new=100)
    _prefill(sched, a)
    step(sched)  # a decodes; its prompt blocks are registered at the start of this step
    before = _used(sched)
    b = add(sched, ids, max_new=100)
    st = step(sched)
    assert b in st.seqs and b.num_computed == 50  # hit 48, recomputed the last 2 tokens
    assert st.num_tokens[st.seqs.index(b)] == 2
    # global: 6 shared blocks + 1 own; chunked: the 2 full blocks of chunk 1 shared + 1 own
    assert b.blocks.tables["global"][:6] == a.blocks.tables["global"][:6]
    assert b.blocks.tables["chunked"][:2] == a.blocks.tables["chunked"][:2] and b.blocks.chunk_start == 32
    assert _used(sched) == {"global": before["global"] + 1, "chunked": before["chunked"] + 1}
    g, c = sched.cache.allocators["global"], sched.cache.allocators["chunked"]
    assert all(g.ref_count(x) == 2 for x in a.blocks.tables["global"][:6])
    assert all(c.ref_count(x) == 2 for x in a.blocks.tables["chunked"][:2])
    assert sched.cache.usage()["prefix_cache_queries"] == 100 and sched.cache.usage()["prefix_cache_hits"] == 48
    # each writes only its own blocks from here on
    assert set(a.blocks.tables["global"][6:]).isdisjoint(b.blocks.tables["global"][6:])
    run(sched)
    assert _used(sched) == {"global": 0, "chunked": 0}
    assert all(g.ref_count(x) == 0 for x in range(64)) and all(c.ref_count(x) == 0 for x in range(32))
    assert sched.cache.usage()["kv_blocks_cached"] > 0  # blocks stay cached after both finished


def test_caching_off_shares_nothing():
    sched = make_sched({"global": 64, "chunked": 32}, caching=False)
    ids = tokens(50)
    a = add(sched, ids, max_new=3)
    run(sched)
    b = add(sched, ids, max_new=3)
    st = step(sched)
    assert st.num_tokens == [32] and b.num_computed == 32
    assert sched.cache.usage()["kv_blocks_cached"] == 0 and sched.cache.usage()["prefix_cache_queries"] == 0
    assert a.finished


def test_hit_never_covers_the_whole_prompt():
    sched = make_sched({"global": 64, "chunked": 32})
    ids = tokens(16)  # exactly 2 blocks
    add(sched, ids, max_new=2)
    run(sched)
    b = add(sched, ids, max_new=2)
    st = step(sched)
    assert st.num_tokens == [8]  # the second block is recomputed for the last token's logits
    assert sched.cache.usage()["prefix_cache_hits"] == 8
    run(sched)


@pytest.mark.parametrize("evict_chunk", [False, True])
def test_shared_prefix_across_chunk_boundary(evict_chunk):
    """Global blocks of the whole shared prefix are reused; the chunked blocks of the prefix's last
    chunk too, unless evicted: then the hit is cut back to that chunk's start."""
    sched = make_sched({"global": 64, "chunked": 10}, block_size=8)
    shared = tokens(48, seed=1)  # chunks [0, 32) and [32, 48)
    add(sched, shared + tokens(9, seed=2), max_new=2)
    run(sched)
    if evict_chunk:  # other traffic takes every chunked block: the cached ones are evicted
        c = sched.cache.allocators["chunked"]
        c.free(c.allocate(c.num_blocks))
    b = add(sched, shared + tokens(20, seed=3), max_new=2)
    st = step(sched)
    hit = 32 if evict_chunk else 48
    assert sched.cache.usage()["prefix_cache_hits"] == hit and st.num_tokens == [64 - 48 if not evict_chunk else 32]
    assert b.blocks.chunk_start == 32 and len(b.blocks.tables["global"]) == (hit + st.num_tokens[0] + 7) // 8
    run(sched)


def test_block_not_multiple_of_chunk_hits_only_at_common_multiples():
    sched = make_sched({"global": 64, "chunked": 32}, block_size=5)  # lcm(5, 32) = 160
    ids = tokens(200)
    add(sched, ids, max_new=1)
    run(sched)
    add(sched, ids, max_new=1)
    step(sched)
    assert sched.cache.usage()["prefix_cache_hits"] == 160
    run(sched)
    # short prompts: no common multiple inside, no hit (and no chunked block is ever cached)
    assert sched.cache.allocators["chunked"].num_cached == 0


def test_lru_evicts_oldest_unreferenced_cached_block_first():
    alloc = BlockAllocator(4)
    blocks = alloc.allocate(4)
    for i, b in enumerate(blocks):
        alloc.register(b, bytes([i]))
    alloc.free([blocks[2]])  # released first: oldest
    alloc.free([blocks[0], blocks[1]])  # a sequence's blocks: its tail (blocks[1]) goes first
    assert alloc.num_free == 3 and alloc.num_cached == 4
    alloc.take(alloc.lookup(bytes([0])))  # a hit takes blocks[0] back out of the queue
    assert alloc.ref_count(blocks[0]) == 1 and alloc.num_free == 2
    assert alloc.allocate(1) == [blocks[2]] and alloc.lookup(bytes([2])) is None  # evicted, hash dropped
    assert alloc.allocate(1) == [blocks[1]] and alloc.lookup(bytes([1])) is None
    with pytest.raises(MemoryError, match="need 1 blocks, 0 free"):
        alloc.allocate(1)
    assert alloc.lookup(bytes([0])) == blocks[0] and alloc.lookup(bytes([3])) == blocks[3]


def test_fresh_blocks_come_before_evicting_cached_ones():
    alloc = BlockAllocator(4)
    a = alloc.allocate(2)
    alloc.register(a[0], b"x")
    alloc.free(a)
    assert alloc.num_free == 4 and alloc.num_cached == 1
    got = alloc.allocate(3)
    assert a[0] not in got and alloc.lookup(b"x") == a[0]
    with pytest.raises(RuntimeError, match="freed more often"):
        alloc.free([got[0], got[0]])


def test_preempted_sequence_resumes_from_its_cached_blocks():
    # 10 global blocks of 8: two 40-token prompts growing to 60 cannot both stay
    sched = make_sched({"global": 12, "chunked": 16}, block_size=8, max_tokens=64)
    a = add(sched, tokens(40, seed=4), max_new=30)
    b = add(sched, tokens(40, seed=5), max_new=30)
    run(sched)
    assert b.num_preemptions > 0 or a.num_preemptions > 0
    assert sched.cache.usage()["prefix_cache_hits"] > 0  # the recompute started from cached blocks
    assert all(x.ref_count(i) == 0 for x in sched.cache.allocators.values() for i in range(x.num_blocks))


def test_child_waits_for_parent_prompt_then_shares_it():
    sched = make_sched({"global": 64, "chunked": 32}, max_tokens=20)
    ids = tokens(40, seed=6)
    parent = add(sched, ids, max_new=5, rid="p")
    kids = [add(sched, ids, max_new=5, rid=f"p-{i}", parent=parent) for i in range(3)]
    other = add(sched, tokens(10, seed=7), max_new=5, rid="o")
    st = step(sched)
    assert st.seqs == [parent] and st.num_tokens == [20]  # the whole budget
    st = step(sched)  # parent up to its chunk end (12); the children wait, the later request does not
    assert st.seqs == [parent, other] and st.num_tokens == [12, 8]
    while parent.num_computed < parent.num_prompt:
        step(sched)
    assert not set(kids) & set(sched.running)
    st = step(sched)  # parent's prompt registered: children admitted, sharing its 4 leading blocks
    got = [(s.request_id, n) for s, n in zip(st.seqs, st.num_tokens)]
    assert got == [("p", 1), ("o", 1), ("p-0", 8), ("p-1", 8), ("p-2", 2)]  # budget 20
    assert sched.cache.usage()["prefix_cache_hits"] == 3 * 32
    g = sched.cache.allocators["global"]
    assert all(k.blocks.tables["global"][:4] == parent.blocks.tables["global"][:4] for k in kids)
    assert [g.ref_count(b) for b in parent.blocks.tables["global"]] == [4] * 4 + [1] * 2  # prompt blocks held once
    run(sched)
    assert sched.cache.usage()["kv_blocks_used"] == 0


def test_child_of_failed_or_finished_parent_still_runs():
    sched = make_sched({"global": 64, "chunked": 32})
    parent = add(sched, tokens(12), max_new=2)
    kid = add(sched, tokens(12), max_new=2, parent=parent)
    sched.finish(parent)  # aborted before it ran
    st = step(sched)
    assert st.seqs == [kid]
    run(sched)


def test_counters_only_count_admissions():
    sched = make_sched({"global": 8, "chunked": 8}, max_num_seqs=1)
    add(sched, tokens(20), max_new=5)
    add(sched, tokens(20), max_new=5)
    for _ in range(3):
        step(sched)  # the second waits on max_num_seqs: no lookups counted meanwhile
    assert sched.cache.usage()["prefix_cache_queries"] == 20
    run(sched)
    assert sched.cache.usage()["prefix_cache_queries"] == 40 and sched.cache.usage()["prefix_cache_hits"] == 16
    assert CFG.attention_chunk_size == 32
