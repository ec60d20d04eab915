"""The grammar library bridge: llguidance.

Why llguidance (not xgrammar): both install and work with our CPU torch wheel and tokenizer, but
llguidance is a self-contained Rust wheel with no torch / CUDA / Triton dependency (xgrammar requires
torch, transformers and triton and ships CUDA-only GPU apply kernels); its token masks are computed
on the host CPU, so the same code serves ROCm, CUDA and CPU, and the mask is applied on the device
by our own vectorised op (structured/bitmask.py). It builds its tokenizer from the HF tokenizer.json
in ~10 ms and validates schemas/grammars without a tokenizer (request-time 400s).

StructuredBackend (one per engine / sampling rank): the tokenizer bridge (LLTokenizer over our
`tokenizers` tokenizer, every eos id of the model), an LRU of compiled grammars keyed by
StructuredOutputsParams.key() (a compiled, untouched matcher; each sequence gets a deep copy), and
GrammarMatcher, one per sequence (n>1 / best_of: one per sample).
"""
from __future__ import annotations

import logging
import os
from collections import OrderedDict

import numpy as np

from amd_llama4.structured.params import StructuredOutputsParams, grammar_text

log = logging.getLogger("amd_llama4.structured")


def bitmask_words(vocab: int) -> int:
    """int32 words per row of a token bitmask covering `vocab` ids (bit j of word w: id 32*w + j)."""
    return (vocab + 31) // 32


class GrammarMatcher:
    """One sequence's grammar state. fill_bitmask writes its allowed ids; accept advances it by a
    sampled id; terminated: the grammar accepted and cannot continue (or it failed): stop."""

    __slots__ = ("_m", "_words", "eos_ids", "failed")

    def __init__(self, matcher, grammar_vocab: int, eos_ids: list[int]):
        self._m = matcher
        self._words = bitmask_words(grammar_vocab)
        self.eos_ids = frozenset(eos_ids)
        self.failed = False  # an id the grammar refused was sampled (e.g. min_tokens masked its only ids)

    def fill_bitmask(self, row: np.ndarray) -> None:
        """row: contiguous int32 [W] with W >= this grammar's words (the logits' width may be larger:
        words past the grammar's vocabulary are zeroed = those ids masked)."""
        if row.dtype != np.int32 or row.ndim != 1 or not row.flags["C_CONTIGUOUS"] or row.size < self._words:
            raise ValueError(f"GrammarMatcher.fill_bitmask: row must be contiguous int32 [>= {self._words}], got "
                             f"{row.dtype} {row.shape}")
        row[self._words:] = 0
        self._m.unsafe_compute_mask_ptr(row.ctypes.data, self._words * 4)

    def accept(self, token_id: int) -> bool:
        if self.failed:
            return False
        if not self._m.consume_token(int(token_id)):
            self.failed = True
            log.warning("structured outputs: sampled id %d refused by the grammar (%s); the sequence stops",
                        token_id, self._m.get_error().splitlines()[0] if self._m.get_error() else "")
            return False
        return True

    @property
    def terminated(self) -> bool:
        return self.failed or self._m.is_stopped()

    @property
    def accepting(self) -> bool:
        return self._m.is_accepting()

    def rollback(self, n: int) -> None:
        """Undo the last n accepted ids (a recompute that drops tokens)."""
        if n > 0:
            self._m.rollback(n)
            self.failed = self._m.is_error()


# llguidance's thread pool fills many rows at once; its hand-off costs more than it saves for small
# batches or on a few (shared) cores: measured on 2 busy cores with the tiny tokenizer, 32 rows took
# 1.0 ms one by one and 1.8-2.9 ms on the pool (perf/bench_structured.py). Real vocabularies (200k ids)
# make each row's mask dearer, and a GPU host has many cores: there the pool pays off.
_PARALLEL_MIN_ROWS = int(os.environ.get("AMD_LLAMA4_GRAMMAR_PARALLEL_ROWS", "16"))
_PARALLEL_MIN_CPUS = 8
_executor = None


def fill_bitmask_rows(rows: list[tuple[int, GrammarMatcher]], host: np.ndarray) -> None:
    """Fill host[i] (int32 [B, W]) for each (i, matcher): with many rows on llguidance's thread pool
    (one call, matchers computed in parallel), else one by one."""
    global _executor
    words = {m._words for _, m in rows}
    if len(rows) < _PARALLEL_MIN_ROWS or (os.cpu_count() or 1) < _PARALLEL_MIN_CPUS or len(words) != 1:
        for i, m in rows:
            m.fill_bitmask(host[i])
        return
    import llguidance as llg

    if _executor is None:
        _executor = llg.LLExecutor()
    gw = words.pop()
    # the pool writes rows of exactly the grammar's width; a wider logits row gets zeros past it
    out = host if host.shape[1] == gw else np.empty((host.shape[0], gw), dtype=np.int32)
    _executor.unsafe_compute_mask_ptr([(m._m, i) for i, m in rows], out.ctypes.data, gw * 4, out.shape[0])
    if out is not host:
        idx = [i for i, _ in rows]
        host[idx, :gw] = out[idx]
        host[idx, gw:] = 0


class StructuredBackend:
    """Compiles StructuredOutputsParams for one tokenizer; see the module docstring."""

    def __init__(self, tokenizer, eos_ids: list[int], cache_size: int = 128):
        import llguidance as llg

        if tokenizer is None:
            raise ValueError("structured_outputs: this model has no tokenizer.json, which the grammar needs")
        self.vocab = int(tokenizer.vocab_size)
        self.eos_ids = [int(t) for t in eos_ids]
        # the tokenizer's own JSON (added/special tokens included), as llguidance reads HF tokenizers
        hf = getattr(tokenizer, "_tok", tokenizer)
        self._tok = llg.LLTokenizer(hf.to_str(), n_vocab=self.vocab, eos_token=self.eos_ids or None)
        self._cache: OrderedDict[tuple[str, str], object] = OrderedDict()
        self._cache_size = cache_size
        self.hits = self.misses = 0

    def compile(self, params: StructuredOutputsParams):
        """-> the compiled, untouched llguidance matcher of params (LRU cached). ValueError naming the
        field if the grammar does not compile for this tokenizer."""
        import llguidance as llg

        key = params.key()
        m = self._cache.get(key)
        if m is not None:
            self.hits += 1
            self._cache.move_to_end(key)
            return m
        self.misses += 1
        m = llg.LLMatcher(self._tok, grammar_text(*key), log_level=0)
        if m.is_error():
            raise ValueError(f"structured_outputs.{key[0]}: {' '.join(m.get_error().split())}")
        self._cache[key] = m
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return m

    def matcher(self, params: StructuredOutputsParams) -> GrammarMatcher:
        return GrammarMatcher(self.compile(params).deep_copy(), self.vocab, self.eos_ids)


class LazyBackend:
    """A StructuredBackend built on first use (a tensor-parallel sampling rank loads the tokenizer
    only when a constrained request arrives). `load()` -> (tokenizer, eos ids)."""

    def __init__(self, load):
        self._load, self._backend = load, None

    def matcher(self, params: StructuredOutputsParams) -> GrammarMatcher:
        if self._backend is None:
            self._backend = StructuredBackend(*self._load())
        return self._backend.matcher(params)
