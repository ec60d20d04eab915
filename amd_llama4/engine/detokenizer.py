"""Streaming detokenisation with stop strings, one `IncrementalDetokenizer` per request.

Text path, O(new tokens) per step:
- byte-level BPE tokenizers (Llama 4, the tiny presets): each token's bytes go through an incremental
  UTF-8 decoder, which holds back an incomplete character until its last byte arrives and turns
  bytes that can never become valid into U+FFFD exactly like `Tokenizer.decode` does. Exact, and the
  concatenated deltas equal `decode(all ids)`.
- other tokenizers: `tokenizers.decoders.DecodeStream` (the same window re-decoding, done inside
  the Rust tokenizer: one call per token), primed with the last prompt ids. It cannot handle two
  cases, which fall back to the Python window path (re-decode ids prefix offset .. end, emit the
  part past the read offset once it no longer ends in U+FFFD, as HF/vLLM streamers do): bytes that
  never become a valid character (DecodeStream holds them forever; after _MAX_PENDING ids they are
  emitted as U+FFFD, like decode, and the window path keeps the rest of the request) and the end of
  the request (DecodeStream has no flush). Without a
  HF `tokenizers` backend, or with use_stream=False, the window path does everything.

Stop strings: the first stop string to COMPLETE in the text wins (ties: the one starting earliest),
independent of how the text was split into tokens. The text is cut exactly before it (or after it
with include_stop_str_in_output). A tail of the text that could still become a stop string is held
back until it is disambiguated, so no delta ever contains text past a stop string.
"""
from __future__ import annotations

import codecs

from amd_llama4.engine.sampling_params import SamplingParams
from amd_llama4.engine.tokenizer import Tokenizer

# Window re-decoding: prompt ids kept as context before the first output id (leading-space rules
# of some tokenizers depend on the previous token), and the most ids one character may need (4 bytes)
# plus slack, after which a trailing U+FFFD is taken as real.
_PREFIX_TOKENS = 5
_MAX_PENDING = 6


class IncrementalDetokenizer:
    def __init__(self, tokenizer: Tokenizer, params: SamplingParams, prompt_ids: list[int] | None = None,
                 use_bytes: bool | None = None, use_stream: bool = True):
        self.tokenizer = tokenizer
        self.params = params
        self.skip_special = params.skip_special_tokens
        self.use_bytes = tokenizer.is_byte_level if use_bytes is None else use_bytes
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        # Window path: ids = last prompt ids (context only) + output ids; offsets index into it.
        self._ids: list[int] = list(prompt_ids[-_PREFIX_TOKENS:]) if prompt_ids else []
        self._prefix = 0
        self._read = len(self._ids)
        self._full = ""  # all decoded output text so far (before any stop cut)
        self._emitted = 0  # chars of _full already returned
        self._cut: int | None = None  # final text length once a stop string matched
        self.stopped_by: str | None = None
        self._closed = False  # finish() was called
        self._stops = list(params.stop)
        self._max_stop = max((len(s) for s in self._stops), default=0)
        # the HF tokenizer DecodeStream steps with (Tokenizer keeps it as _tok)
        self._hf = getattr(tokenizer, "_tok", None) if use_stream and not self.use_bytes else None
        self._stream = self._new_stream() if self._hf is not None else None

    @property
    def text(self) -> str:
        """Cumulative output text = the concatenation of all deltas returned so far (cut exactly
        at the stop string once one matched; held-back bytes/tail excluded until released)."""
        return self._full[: self._emitted]

    @property
    def finished(self) -> bool:
        """A stop string matched or finish() was called: add() returns "" from now on."""
        return self._cut is not None or self._closed

    def add(self, token_id: int) -> str:
        """Feed one generated id; return the newly printable text (may be "")."""
        if self.finished:
            return ""
        if self.use_bytes:
            piece = self._decode_bytes(token_id)
        else:
            piece = self._decode_stream(token_id) if self._stream is not None else self._decode_window(token_id)
        return self._append(piece, final=False)

    def finish(self) -> str:
        """End of request: flush incomplete bytes (as U+FFFD, like decode) and the held-back tail."""
        if self.finished:
            return ""
        self._closed = True
        if self.use_bytes:
            piece = self._utf8.decode(b"", final=True)
        else:
            piece = self._flush_window()
        return self._append(piece, final=True)

    # -- decoding ----------------------------------------------------------------------------------
    def _decode_bytes(self, token_id: int) -> str:
        if self.skip_special and self.tokenizer.is_special(token_id):
            return ""
        return self._utf8.decode(self.tokenizer.token_bytes(token_id))

    def _new_stream(self):
        """A DecodeStream primed with the ids before the read offset (leading-space context)."""
        try:
            from tokenizers.decoders import DecodeStream
        except ImportError:  # tokenizers < 0.21
            self._hf = None
            return None
        return DecodeStream(ids=self._ids[self._prefix: self._read], skip_special_tokens=self.skip_special)

    def _decode_stream(self, token_id: int) -> str:
        self._ids.append(token_id)
        piece = self._stream.step(self._hf, token_id)
        if piece is None and len(self._ids) - self._read < _MAX_PENDING:
            return ""  # an incomplete character: wait for its remaining bytes
        if piece is None:  # bytes that never form a character: the window path emits them as
            self._ids.pop()  # U+FFFD and keeps the request (a stream primed with them re-emits them)
            self._stream = None
            return self._decode_window(token_id)
        self._advance()
        return piece

    def _advance(self) -> None:
        """The ids up to the end were emitted: they become the next window's context."""
        self._prefix, self._read = self._read, len(self._ids)
        if self._prefix > 256:  # drop ids no window will look at again
            del self._ids[: self._prefix]
            self._read -= self._prefix
            self._prefix = 0

    def _decode_window(self, token_id: int) -> str:
        self._ids.append(token_id)
        before = self.tokenizer.decode(self._ids[self._prefix: self._read], self.skip_special)
        now = self.tokenizer.decode(self._ids[self._prefix:], self.skip_special)
        if now.endswith("\ufffd") and len(self._ids) - self._read < _MAX_PENDING:
            return ""  # an incomplete character: wait for its remaining bytes
        # The emitted chunk becomes the next window's context; the window never exceeds
        # 2 * _MAX_PENDING ids (+ prompt context at the start).
        self._advance()
        return now[len(before):]

    def _flush_window(self) -> str:
        if self._read == len(self._ids):
            return ""
        before = self.tokenizer.decode(self._ids[self._prefix: self._read], self.skip_special)
        now = self.tokenizer.decode(self._ids[self._prefix:], self.skip_special)
        self._read = len(self._ids)
        return now[len(before):]

    # -- stop strings ------------------------------------------------------------------------------
    def _append(self, piece: str, final: bool) -> str:
        old_len = len(self._full)
        self._full += piece
        if self._stops and piece:
            match = self._find_stop(old_len)
            if match is not None:
                start, stop = match
                self.stopped_by = stop
                self._cut = start + len(stop) if self.params.include_stop_str_in_output else start
                delta = self._full[self._emitted: self._cut]
                self._emitted = max(self._emitted, self._cut)
                return delta
        end = len(self._full) if final else len(self._full) - self._held_tail()
        delta = self._full[self._emitted: end]
        self._emitted = max(self._emitted, end)
        return delta

    def _find_stop(self, old_len: int) -> tuple[int, str] | None:
        """Earliest-completing stop string among those ending in the new text (none ended before)."""
        best: tuple[int, int, str] | None = None  # (end, start, stop)
        lo = max(0, old_len - self._max_stop + 1)
        for stop in self._stops:
            i = self._full.find(stop, lo)
            if i >= 0:
                key = (i + len(stop), i, stop)
                if best is None or key[:2] < best[:2]:
                    best = key
        return None if best is None else (best[1], best[2])

    def _held_tail(self) -> int:
        """Length of the longest text suffix that is a proper prefix of some stop string."""
        hold = 0
        text = self._full
        for stop in self._stops:
            for k in range(min(len(stop) - 1, len(text)), hold, -1):
                if text.endswith(stop[:k]):
                    hold = k
                    break
        return hold
