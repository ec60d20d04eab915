"""The incremental tool-call parser both formats share.

Model text arrives in pieces. Ordinary text goes out as content at once; from a position where a
call could start (`[`, `{`, `<|python_start|>`: the format's `probe` says) the text is held until
the candidate either closes (brackets matched outside string literals) or cannot be a call. A closed
candidate that the format's `parse` accepts becomes tool-call deltas; anything else is released as
content, so no text is ever lost. The whole output at once (`extract`) runs the same machine, so
streamed and non-streamed results agree by construction.

Whitespace right before a call and separators right after it (format's `separators`) are dropped;
everything else keeps its place."""
from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum
from typing import Any, Callable

from amd_llama4.serve.tools.calls import ParsedCall, call_deltas

PYTHON_START, PYTHON_END = "<|python_start|>", "<|python_end|>"


class Probe(Enum):
    NO = 0    # not a call here
    MORE = 1  # could be one: need more text to tell
    YES = 2   # looks like one: hold it until it closes


@dataclass(frozen=True)
class CallFormat:
    """One tool-call text format (pythonic list, JSON objects): how a candidate opens and is parsed."""
    starts: str       # characters that may open a bare candidate ('<' for <|python_start|> is added)
    quotes: str       # string delimiters inside a call
    triple: bool      # Python triple-quoted strings
    separators: str   # dropped after a call (whitespace, ';' between JSON calls)
    start: re.Pattern  # matches the start of text that looks like a call
    partial: re.Pattern  # fully matches a prefix that could still become one
    parse: Callable[[str], list[ParsedCall] | None]  # the whole candidate -> calls, None: not calls

    def probe(self, text: str) -> Probe:
        if self.start.match(text):
            return Probe.YES
        return Probe.MORE if self.partial.fullmatch(text) else Probe.NO


def probe_python_start(text: str) -> Probe:
    if text.startswith(PYTHON_START):
        return Probe.YES
    return Probe.MORE if PYTHON_START.startswith(text) else Probe.NO


class _Brackets:
    """Incremental matcher from an opening bracket to its closer, skipping string literals."""
    _PAIRS = {"(": ")", "[": "]", "{": "}"}

    def __init__(self, start: int, quotes: str, triple: bool) -> None:
        self.i, self.quotes, self.triple = start, quotes, triple
        self.stack: list[str] = []
        self.quote: str | None = None  # the open string's delimiter (1 or 3 chars)
        self.escape = False

    def run(self, buf: str) -> int | None:
        """The index just past the closer; None: need more text; -1: mismatched brackets."""
        n = len(buf)
        while self.i < n:
            ch = buf[self.i]
            if self.quote is not None:
                if self.escape:
                    self.escape = False
                elif ch == "\\":
                    self.escape = True
                elif buf.startswith(self.quote, self.i):
                    self.i += len(self.quote) - 1
                    self.quote = None
                elif len(self.quote) == 3 and ch == self.quote[0] and n - self.i < 3:
                    return None  # maybe the start of the closing triple quote
                self.i += 1
                continue
            if ch in self.quotes:
                if self.triple and n - self.i < 3 and buf[self.i:] == ch * (n - self.i):
                    return None  # "" or """: tell once the next character is here
                self.quote = ch * 3 if self.triple and buf.startswith(ch * 3, self.i) else ch
                self.i += len(self.quote)
                continue
            if ch in self._PAIRS:
                self.stack.append(self._PAIRS[ch])
            elif ch in ")]}":
                if not self.stack or self.stack.pop() != ch:
                    return -1
                if not self.stack:
                    self.i += 1
                    return self.i
            self.i += 1
        return None


@dataclass
class _Held:
    ws: int     # where the held whitespace before the candidate starts
    start: int  # the candidate's first character
    wrapped: bool
    brackets: _Brackets | None


class CallStream:
    """One choice's output through a call format. `feed(text)` -> OpenAI deltas, each
    {"content": str} or {"tool_calls": [...]}; `feed("", final=True)` at the end flushes."""

    def __init__(self, fmt: CallFormat, tool_names: set[str] | None = None) -> None:
        self.fmt, self.tool_names = fmt, tool_names
        self.buf, self.pos = "", 0
        self.held: _Held | None = None
        self.after_call = False
        self.calls: list[ParsedCall] = []
        # Whitespace cut around calls; one run of it goes back between content before and after them.
        self._gap, self._had_content = "", False
        self._starts = set(fmt.starts) | {"<"}

    def feed(self, text: str, final: bool = False) -> list[dict[str, Any]]:
        self.buf += text
        out: list[dict[str, Any]] = []
        self._advance(out, final)
        return out

    # -- the machine ---------------------------------------------------------------------------
    def _content(self, out: list[dict[str, Any]], end: int) -> None:
        if end > self.pos:
            text = self.buf[self.pos:end]
            if self._gap and self._had_content:
                text = self._gap + text
            out.append({"content": text})
            self._gap, self._had_content = "", True
        self.pos = max(self.pos, end)

    def _advance(self, out: list[dict[str, Any]], final: bool) -> None:
        buf = self.buf
        while True:
            if self.after_call:
                skipped = self.pos
                while self.pos < len(buf) and buf[self.pos] in self.fmt.separators:
                    self.pos += 1
                self._gap = "".join(ch for ch in buf[skipped:self.pos] if ch.isspace()) or self._gap
                if self.pos == len(buf):
                    return
                self.after_call = False
            if self.held is None:
                if not self._find(out, final):
                    return
            elif not self._close(out, final):
                return

    def _find(self, out: list[dict[str, Any]], final: bool) -> bool:
        """Emit content up to the next candidate and hold it; False: wait for more text."""
        buf, i = self.buf, self.pos
        while i < len(buf):
            if buf[i] in self._starts:
                wrapped = buf[i] == "<"
                state = probe_python_start(buf[i:]) if wrapped else self.fmt.probe(buf[i:])
                if state is Probe.MORE and final:
                    state = Probe.NO
                if state is not Probe.NO:
                    ws = i - (len(buf[self.pos:i]) - len(buf[self.pos:i].rstrip()))
                    self._content(out, ws)
                    if state is Probe.MORE:
                        return False
                    brackets = None if wrapped else _Brackets(i, self.fmt.quotes, self.fmt.triple)
                    self.held = _Held(ws, i, wrapped, brackets)
                    return True
            i += 1
        text = buf[self.pos:]
        self._content(out, len(buf) if final else self.pos + len(text.rstrip()))
        return False

    def _close(self, out: list[dict[str, Any]], final: bool) -> bool:
        """Try to finish the held candidate; False: wait for more text."""
        h, buf = self.held, self.buf
        assert h is not None
        if h.wrapped:
            j = buf.find(PYTHON_END, h.start + len(PYTHON_START))
            end = j + len(PYTHON_END) if j >= 0 else (len(buf) if final else None)
            inner = buf[h.start + len(PYTHON_START): j if j >= 0 else len(buf)]
        else:
            assert h.brackets is not None
            end = h.brackets.run(buf)
            inner = buf[h.start:end] if end is not None and end >= 0 else ""
        if end is None:
            if not final:
                return False
            end = -1  # never closed: not a call
        calls = self.fmt.parse(inner.strip()) if end >= 0 else None
        if calls and self.tool_names is not None and any(c.name not in self.tool_names for c in calls):
            calls = None
        self.held = None
        if not calls:  # not a call after all: content. A closed candidate goes out whole (no calls
            # are taken from inside it); an unclosed one only its first character, then look again.
            self.pos = h.ws
            self._content(out, end if end > h.start else h.start + 1)
            return True
        for c in calls:
            out.extend(call_deltas(len(self.calls), c))
            self.calls.append(c)
        self._gap = self.buf[h.ws:h.start] or self._gap
        self.pos, self.after_call = end, True
        return True


def extract(fmt: CallFormat, text: str, tool_names: set[str] | None = None) -> tuple[str | None, list[ParsedCall]]:
    """The whole output at once -> (content, calls). Without calls the content is `text` unchanged;
    with calls, None when nothing but whitespace is left around them."""
    stream = CallStream(fmt, tool_names)
    deltas = stream.feed(text, final=True)
    if not stream.calls:
        return text, []
    content = "".join(d["content"] for d in deltas if "content" in d)
    return (content if content.strip() else None), stream.calls
