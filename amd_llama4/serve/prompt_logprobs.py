"""Prompt logprobs in the API's shapes: vLLM's `prompt_logprobs` (per position null or {token id:
{logprob, rank, decoded_token}}) and OpenAI's echo + logprobs lists for /v1/completions."""
from __future__ import annotations

from typing import Any

from amd_llama4.engine.outputs import Logprob
from amd_llama4.serve.generation import TokenText, safe_logprob
from amd_llama4.serve.protocol import APIError

# engine entries: per prompt position None (the first) or (the prompt token's Logprob, top-k Logprobs)
Entries = list[tuple[Logprob, list[Logprob]] | None]


def require(entries: Entries | None, prompt_len: int) -> Entries:
    if entries is None or len(entries) != prompt_len:
        got = "none" if entries is None else f"{len(entries)}"
        raise APIError(500, f"the engine returned {got} prompt logprobs for a prompt of {prompt_len} tokens",
                       type="server_error", code="engine_error")
    return entries


def vllm_prompt_logprobs(entries: Entries, k: int, text_of: TokenText) -> list[dict[str, Any] | None]:
    """The prompt token and its top-k alternatives per position; rank is 1-based in the top-k
    (None for a prompt token outside it)."""
    out: list[dict[str, Any] | None] = []
    for e in entries:
        if e is None:
            out.append(None)
            continue
        tok, alts = e
        ranks = {a.token_id: r for r, a in enumerate(alts, 1)}
        d = {str(a.token_id): {"logprob": safe_logprob(a.logprob), "rank": r, "decoded_token": text_of(a)}
             for r, a in enumerate(alts[:k], 1)}
        d[str(tok.token_id)] = {"logprob": safe_logprob(tok.logprob), "rank": ranks.get(tok.token_id),
                                "decoded_token": text_of(tok)}
        out.append(d)
    return out


def echo_logprobs(entries: Entries, prompt_ids: list[int], k: int, text_of: TokenText) -> dict[str, list]:
    """OpenAI's completion logprobs of the echoed prompt: the first token's logprob and top
    logprobs are null (nothing predicts it); offsets count from the start of the echoed text."""
    tokens, token_lps, tops, offsets, offset = [], [], [], [], 0
    for tid, e in zip(prompt_ids, entries):
        s = text_of(Logprob(tid, 0.0) if e is None else e[0])
        tokens.append(s)
        token_lps.append(None if e is None else safe_logprob(e[0].logprob))
        tops.append(None if e is None else _by_text(e[1][:k], text_of))
        offsets.append(offset)
        offset += len(s)
    return {"text_offset": offsets, "token_logprobs": token_lps, "tokens": tokens, "top_logprobs": tops}


def _by_text(alts: list[Logprob], text_of: TokenText) -> dict[str, float]:
    """OpenAI's top_logprobs are keyed by text: of ids that decode alike (byte pieces) the most likely stays."""
    out: dict[str, float] = {}
    for a in alts:  # most likely first
        out.setdefault(text_of(a), safe_logprob(a.logprob))
    return out


def concat_logprobs(first: dict[str, list], second: dict[str, list]) -> dict[str, list]:
    return {key: first[key] + second[key] for key in first}
