"""Continuous batching: which sequences run this step, and their KV blocks.

A step is either a prefill step (new or unfinished prompts, split into pieces that respect the
token budget and never span two attention chunks) or a decode step (one token per running
sequence). Prefill and decode alternate while both have work, so neither starves. FIFO by arrival;
when blocks run out the youngest running sequence is preempted (its blocks freed, recomputed
later from its prompt + output so far).
"""
from __future__ import annotations

import itertools
from collections import deque
from dataclasses import dataclass, field

from amd_llama4.engine.block_manager import SeqBlocks
from amd_llama4.engine.kv_cache import KVCache

_arrival = itertools.count()


@dataclass
class Sequence:
    request_id: str
    token_ids: list[int]  # prompt + generated so far
    num_prompt: int
    state: object = None  # engine-side request state (sampling, detokenizer, ...)
    num_computed: int = 0  # tokens whose K/V are in the cache
    blocks: SeqBlocks = field(default_factory=SeqBlocks)
    arrival: int = field(default_factory=lambda: next(_arrival))
    num_preemptions: int = 0

    @property
    def pending(self) -> int:
        return len(self.token_ids) - self.num_computed


@dataclass
class ScheduledStep:
    seqs: list[Sequence]
    num_tokens: list[int]  # tokens to compute for each sequence, from seq.num_computed
    is_prefill: bool
    failed: list[tuple[Sequence, str]] = field(default_factory=list)  # can never fit: end with an error


class Scheduler:
    def __init__(self, cache: KVCache, max_num_seqs: int, max_num_batched_tokens: int):
        if max_num_seqs < 1 or max_num_batched_tokens < 1:
            raise ValueError("max_num_seqs and max_num_batched_tokens must be >= 1")
        self.cache = cache
        self.max_num_seqs, self.max_tokens = max_num_seqs, max_num_batched_tokens
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self._last_was_prefill = False
        self._failed: list[tuple[Sequence, str]] = []

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def find(self, request_id: str) -> Sequence | None:
        return next((s for s in itertools.chain(self.running, self.waiting) if s.request_id == request_id), None)

    def finish(self, seq: Sequence) -> None:
        """Remove a sequence (finished, aborted or failed) and free its blocks."""
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        self.cache.release(seq.blocks)

    def _piece(self, seq: Sequence, budget: int) -> int:
        n = min(seq.pending, budget)
        if self.cache.chunk and "chunked" in self.cache.kinds:
            n = min(n, (seq.num_computed // self.cache.chunk + 1) * self.cache.chunk - seq.num_computed)
        return n

    def _preempt(self, victim: Sequence) -> None:
        self.running.remove(victim)
        self.cache.release(victim.blocks)
        victim.num_computed = 0
        victim.num_preemptions += 1
        self.waiting.append(victim)
        self.waiting = deque(sorted(self.waiting, key=lambda s: s.arrival))  # FIFO by arrival

    def _reserve(self, seq: Sequence, n: int, may_preempt: bool) -> bool:
        """Blocks for seq's next n tokens; may preempt younger sequences, or seq itself if it is the
        youngest (then False)."""
        start = seq.num_computed
        while not self.cache.can_reserve(seq.blocks, start, start + n):
            if not may_preempt:
                return False
            victim = max(self.running, key=lambda s: s.arrival)
            if victim is seq and len(self.running) == 1:  # alone and still no room: it can never fit
                self.running.remove(seq)
                self.cache.release(seq.blocks)
                self._failed.append((seq, f"sequence of {start + n} tokens needs more KV cache blocks than "
                                          f"exist ({self.cache.usage()['kv_blocks_total']})"))
                return False
            self._preempt(victim)
            if victim is seq:
                return False
        self.cache.reserve(seq.blocks, start, start + n)
        return True

    def schedule(self) -> ScheduledStep:
        prefill_work = bool(self.waiting) or any(s.pending > 1 for s in self.running)
        decode_work = any(s.pending == 1 for s in self.running)
        do_prefill = prefill_work and not (decode_work and self._last_was_prefill)
        self._last_was_prefill = do_prefill
        step = self._prefill() if do_prefill else self._decode()
        step.failed += self._failed
        self._failed = []
        return step

    def _prefill(self) -> ScheduledStep:
        step = ScheduledStep([], [], True)
        budget = self.max_tokens
        for seq in sorted((s for s in self.running if s.pending > 1), key=lambda s: s.arrival):
            n = self._piece(seq, budget)
            if n <= 0 or seq not in self.running or not self._reserve(seq, n, may_preempt=True):
                continue
            step.seqs.append(seq)
            step.num_tokens.append(n)
            budget -= n
        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
            seq = self.waiting[0]
            n = self._piece(seq, budget)
            if not self._reserve(seq, n, may_preempt=False):
                if not self.running and not step.seqs:  # alone with an empty cache and still no room
                    self.waiting.popleft()
                    step.failed.append((seq, f"request needs more KV cache blocks than exist "
                                              f"({self.cache.usage()['kv_blocks_total']})"))
                    continue
                break
            self.waiting.popleft()
            self.running.append(seq)
            step.seqs.append(seq)
            step.num_tokens.append(n)
            budget -= n
        if not step.seqs and not step.failed and any(s.pending == 1 for s in self.running):
            return self._decode()
        return step

    def _decode(self) -> ScheduledStep:
        step = ScheduledStep([], [], False)
        for seq in sorted(self.running, key=lambda s: s.arrival):
            if seq not in self.running or seq.pending != 1:
                continue
            if self._reserve(seq, 1, may_preempt=True):
                step.seqs.append(seq)
                step.num_tokens.append(1)
        # a sequence preempted after it was picked must not run
        keep = [(s, n) for s, n in zip(step.seqs, step.num_tokens) if s in self.running]
        step.seqs, step.num_tokens = [s for s, _ in keep], [n for _, n in keep]
        return step
