"""Continuous batching with mixed steps (vLLM V1-style chunked prefill): which sequences run this
step, how many tokens each, and their KV blocks.

One step holds every running decode (one token each) first, then prefill pieces up to the token
budget (max_num_batched_tokens, real tokens only): running partial prompts first, then waiting
requests FIFO by arrival. So a decode is never held back by a prefill, and a long prompt is
computed a piece per step beside the decodes. A piece never spans two attention chunks (the
chunked pool keeps one chunk per sequence, block_manager.py). With automatic prefix caching
(prefix_cache.py) an admitted request starts from its longest cached prefix, and computed full
blocks are registered after the step that computed them. When blocks run out the youngest running
sequence is preempted (its references dropped, recomputed later from prompt + output so far, mostly
from the cache); no request is admitted in a step that preempted. A request that can never fit
fails. A child sequence (parallel sampling: `parent` set) waits until its parent's prompt has been
computed, so it shares the parent's cached prompt blocks.
"""
from __future__ import annotations

import itertools
from collections import deque
from dataclasses import dataclass, field

from amd_llama4.engine.block_manager import SeqBlocks
from amd_llama4.engine.kv_cache import KVCache
from amd_llama4.engine.prefix_cache import PrefixCache

_arrival = itertools.count()


@dataclass(eq=False)  # identity equality: `seq in running` must not compare token lists
class Sequence:
    request_id: str
    token_ids: list[int]  # prompt + generated so far
    num_prompt: int
    state: object = None  # engine-side request state (sampling, detokenizer, ...)
    num_computed: int = 0  # tokens whose K/V are in the cache
    blocks: SeqBlocks = field(default_factory=SeqBlocks)
    arrival: int = field(default_factory=lambda: next(_arrival))
    num_preemptions: int = 0
    parent: Sequence | None = None  # parallel sampling: admitted once the parent's prompt is computed
    block_extra_keys: dict[int, bytes] | None = None  # block index -> extra prefix-cache key (images)
    block_hashes: list[bytes] = field(default_factory=list, repr=False)  # prefix_cache.block_hashes
    prompt_computed: bool = False  # the whole prompt has been in the cache (set after that step)
    finished: bool = False  # left the scheduler (finished, aborted or failed)

    @property
    def pending(self) -> int:
        return len(self.token_ids) - self.num_computed


@dataclass
class ScheduledStep:
    seqs: list[Sequence]
    num_tokens: list[int]  # tokens to compute for each sequence, from seq.num_computed
    failed: list[tuple[Sequence, str]] = field(default_factory=list)  # can never fit: end with an error
    is_prefill: bool = False  # any item is more than a one-token decode (a prompt or recompute piece)


class Scheduler:
    def __init__(self, cache: KVCache, max_num_seqs: int, max_num_batched_tokens: int,
                 enable_prefix_caching: bool = True):
        if max_num_seqs < 1 or max_num_batched_tokens < 1:
            raise ValueError("max_num_seqs and max_num_batched_tokens must be >= 1")
        self.cache = cache
        self.max_num_seqs, self.max_tokens = max_num_seqs, max_num_batched_tokens
        self.prefix = PrefixCache(cache) if enable_prefix_caching else None
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self._failed: list[tuple[Sequence, str]] = []
        self._preempted = False

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def find(self, request_id: str) -> Sequence | None:
        return next((s for s in itertools.chain(self.running, self.waiting) if s.request_id == request_id), None)

    def finish(self, seq: Sequence) -> None:
        """Remove a sequence (finished, aborted or failed) and drop its block references; its
        computed full blocks stay in the prefix cache."""
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        self._computed(seq)
        self.cache.release(seq.blocks)
        seq.finished = True

    def _computed(self, seq: Sequence) -> None:
        """Bookkeeping after a step computed some of seq's tokens."""
        if seq.num_computed >= seq.num_prompt:
            seq.prompt_computed = True
        if self.prefix is not None:
            self.prefix.register(seq)

    def _fail(self, seq: Sequence, why: str) -> None:
        self.cache.release(seq.blocks)
        seq.finished = True
        self._failed.append((seq, why))

    def _piece(self, seq: Sequence, budget: int) -> int:
        n = min(seq.pending, budget)
        if self.cache.chunk and "chunked" in self.cache.kinds:
            n = min(n, (seq.num_computed // self.cache.chunk + 1) * self.cache.chunk - seq.num_computed)
        return n

    def _preempt(self, victim: Sequence) -> None:
        self.running.remove(victim)
        self._computed(victim)
        self.cache.release(victim.blocks)
        victim.num_computed = 0
        victim.num_preemptions += 1
        self._preempted = True
        self.waiting.append(victim)
        self.waiting = deque(sorted(self.waiting, key=lambda s: s.arrival))  # FIFO by arrival

    def _reserve(self, seq: Sequence, n: int, may_preempt: bool) -> bool:
        """Blocks for seq's next n tokens; may preempt younger sequences, or seq itself if it is the
        youngest (then False)."""
        start = seq.num_computed
        if self.cache.covers(seq.blocks, start, start + n):  # most decodes: the slot is already held
            return True
        while not self.cache.can_reserve(seq.blocks, start, start + n):
            if not may_preempt:
                return False
            victim = max(self.running, key=lambda s: s.arrival)
            if victim is seq and len(self.running) == 1:  # alone and still no room: it can never fit
                self.running.remove(seq)
                self._fail(seq, f"sequence of {start + n} tokens needs more KV cache blocks than "
                                f"exist ({self.cache.usage()['kv_blocks_total']})")
                return False
            self._preempt(victim)
            if victim is seq:
                return False
        self.cache.reserve(seq.blocks, start, start + n)
        return True

    def schedule(self) -> ScheduledStep:
        for seq in self.running:  # the last step's tokens are in the cache now
            self._computed(seq)
        self._preempted = False
        step = ScheduledStep([], [])
        budget = self.max_tokens
        by_arrival = sorted(self.running, key=lambda s: s.arrival)
        # every running decode, then the running partial prompts (or recomputes)
        for decode in (True, False):
            for seq in by_arrival:
                if budget <= 0:
                    break
                if (seq.pending == 1) != decode:
                    continue
                # only a preemption or failure in this step takes a sequence out of running (the
                # O(B) membership test is skipped until then)
                if (self._preempted or self._failed) and seq not in self.running:
                    continue
                n = self._piece(seq, budget)
                if self._reserve(seq, n, may_preempt=True):
                    step.seqs.append(seq)
                    step.num_tokens.append(n)
                    budget -= n
        if not self._preempted:  # a preempting step admits nothing: it would take the blocks back
            budget = self._admit(step, budget)
        if self._preempted or self._failed:  # a sequence preempted after it was picked must not run
            keep = [(s, n) for s, n in zip(step.seqs, step.num_tokens) if s in self.running]
            step.seqs, step.num_tokens = [s for s, _ in keep], [n for _, n in keep]
        step.is_prefill = any(n > 1 or s.pending > 1 for s, n in zip(step.seqs, step.num_tokens))
        step.failed += self._failed
        self._failed = []
        return step

    def _admit(self, step: ScheduledStep, budget: int) -> int:
        """Waiting requests FIFO into the step while budget, sequence slots and blocks allow."""
        held_back = []  # children whose parent's prompt is not computed yet: they keep their place
        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
            seq = self.waiting.popleft()
            parent = seq.parent
            if parent is not None and not (parent.prompt_computed or parent.finished):
                held_back.append(seq)
                continue
            hit = self.prefix.take(seq) if self.prefix is not None else 0
            n = self._piece(seq, budget)
            if not self._reserve(seq, n, may_preempt=False):
                self.cache.release(seq.blocks)  # the prefix hit's references, if any
                seq.num_computed = 0
                if not self.running and not step.seqs:  # alone with an empty cache and still no room
                    self._fail(seq, f"request needs more KV cache blocks than exist "
                                    f"({self.cache.usage()['kv_blocks_total']})")
                    continue
                self.waiting.appendleft(seq)
                break
            if self.prefix is not None:
                self.prefix.count(seq, hit)
            self.running.append(seq)
            step.seqs.append(seq)
            step.num_tokens.append(n)
            budget -= n
        self.waiting.extendleft(reversed(held_back))
        return budget
