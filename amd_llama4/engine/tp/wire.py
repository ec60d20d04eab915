"""What crosses processes each tensor-parallel step, and the worker-side mirror it updates.

Driver -> workers: one StepMessage per step (put once, read by every rank) with the requests seen
for the first time, the ones gone since the last step, and per scheduled sequence its new tokens
and only the changes of its block tables: a decode step's message does not grow with the context.
Rank 0 -> driver: the sampled ids (and requested logprobs) as SampleResults, never logits.
Every rank keeps the same mirror (block tables; rank 0 also samples from the sampling states).
Images: a request's pixel values and patch positions go once, with its NewRequest; every rank holds
the (replicated) vision tower and its own encoder cache; each encodes the images itself
(mm_encoder_tp_mode="weights") or its share, the features then exchanged by one all_gather ("data",
engine/mm_encoder_dp.py).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from amd_llama4.engine.block_manager import SeqBlocks
from amd_llama4.engine.mm_inputs import EncoderCache, MMRequest
from amd_llama4.engine.runner import StepItem
from amd_llama4.engine.sampler import SamplingState
from amd_llama4.engine.sampling_params import SamplingParams


@dataclass
class NewRequest:
    key: int  # the driver's Sequence.arrival: unique per sequence, stable across preemption
    params: SamplingParams
    prompt_token_ids: list[int]
    eos_token_ids: list[int]
    output_token_ids: list[int]
    images: MMRequest | None = None  # pixel values + patch positions (engine/mm_inputs.py)


@dataclass
class SeqStep:
    key: int
    tokens: list[int]  # compute these, at positions start .. start+len-1
    start: int
    sample: bool  # the last token ends the known ids: sample the next one
    # kind -> (replace, blocks): replace=False appends to the mirror's table; only changed kinds
    tables: dict[str, tuple[bool, list[int]]] = field(default_factory=dict)
    chunk_start: int | None = None  # None: unchanged


@dataclass
class StepMessage:
    new: list[NewRequest]
    finished: list[int]
    seqs: list[SeqStep]


@dataclass
class _Sent:
    """What the workers' mirror holds of one table: the driver's list object (kept alive, so a
    replaced table never shares its identity), how many of its blocks were sent, the last one."""

    table: list[int]
    n: int
    last: int | None


class StepEncoder:
    """Driver side: turns scheduled sequences into a StepMessage of changes since the last one."""

    def __init__(self) -> None:
        self._sent: dict[int, dict[str, _Sent]] = {}
        self._chunk_start: dict[int, int] = {}

    def encode(self, seqs, num_tokens: list[int], sample: list[bool], states: list[SamplingState],
               live: set[int], images: list[MMRequest | None] | None = None) -> StepMessage:
        """seqs: the scheduler's Sequences of this step; states: their SamplingStates; live: keys
        (Sequence.arrival) of every sequence the engine still holds (the rest are dropped);
        images: each sequence's request images (None: none)."""
        images = images or [None] * len(seqs)
        finished = [k for k in self._sent if k not in live]
        for k in finished:
            del self._sent[k], self._chunk_start[k]
        new, steps = [], []
        for seq, n, smp, st, mm in zip(seqs, num_tokens, sample, states, images):
            key = seq.arrival
            if key not in self._sent:
                new.append(NewRequest(key, st.params, list(st.prompt_token_ids), list(st.eos_token_ids),
                                      list(st.output_token_ids), mm))
                self._sent[key], self._chunk_start[key] = {}, 0
            step = SeqStep(key, seq.token_ids[seq.num_computed:seq.num_computed + n], seq.num_computed, smp)
            sent = self._sent[key]
            for kind, table in seq.blocks.tables.items():
                s = sent.get(kind)
                appended = (s is not None and s.table is table and len(table) >= s.n
                            and (s.n == 0 or table[s.n - 1] == s.last))
                if not appended:  # a new chunk, a preemption: the (bounded or rare) full table
                    step.tables[kind] = (True, list(table))
                elif len(table) > s.n:
                    step.tables[kind] = (False, table[s.n:])
                sent[kind] = _Sent(table, len(table), table[-1] if table else None)
            if seq.blocks.chunk_start != self._chunk_start[key]:
                step.chunk_start = self._chunk_start[key] = seq.blocks.chunk_start
            steps.append(step)
        return StepMessage(new, finished, steps)


class StepMirror:
    """Worker side: the block tables and sampling states of every live sequence. structured: what
    builds a constrained sequence's grammar matcher on the sampling rank (structured.backend.LazyBackend;
    None: this rank does not sample)."""

    def __init__(self, structured=None) -> None:
        self.structured = structured
        self.blocks: dict[int, SeqBlocks] = {}
        self.sampling: dict[int, SamplingState] = {}
        self.images: dict[int, MMRequest] = {}  # live sequences with images
        self.encoder_cache = EncoderCache()  # this rank's features, referenced by those sequences

    def apply(self, msg: StepMessage) -> tuple[list[StepItem], list[int], list[SamplingState]]:
        """-> (the runner's items, rows to sample, their sampling states)."""
        for k in msg.finished:
            self.blocks.pop(k, None)
            self.sampling.pop(k, None)
            mm = self.images.pop(k, None)
            if mm is not None:
                self.encoder_cache.release(mm.hashes)
        for r in msg.new:
            if r.images is not None:
                self.images[r.key] = r.images
                self.encoder_cache.acquire(r.images.hashes)
            self.blocks[r.key] = SeqBlocks()
            so = r.params.structured_outputs
            matcher = self.structured.matcher(so) if so is not None and self.structured is not None else None
            st = self.sampling[r.key] = SamplingState(r.params, r.prompt_token_ids, r.eos_token_ids, matcher=matcher)
            for t in r.output_token_ids:
                st.append(t)
        items, rows, states = [], [], []
        for row, s in enumerate(msg.seqs):
            blocks = self.blocks[s.key]
            for kind, (replace, ids) in s.tables.items():
                if replace:
                    blocks.tables[kind] = list(ids)
                else:
                    blocks.tables[kind] += ids
            if s.chunk_start is not None:
                blocks.chunk_start = s.chunk_start
            items.append(StepItem(blocks, s.tokens, s.start))
            if s.sample:
                rows.append(row)
                states.append(self.sampling[s.key])
        return items, rows, states

    def image_pieces(self, msg: StepMessage) -> list[tuple[MMRequest | None, int, int]]:
        """(images, start, n) per item of msg (after apply), for mm_inputs.step_image_features."""
        return [(self.images.get(s.key), s.start, len(s.tokens)) for s in msg.seqs]
