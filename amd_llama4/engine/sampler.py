"""Per-request sampling over a batch of logits (vLLM semantics).

Order, per row:
 1. min_tokens: while fewer than min_tokens ids were generated, eos (unless ignore_eos) and
    stop_token_ids get logit -inf. logit_bias: each request's biases added to its row (one
    index_add_ for the batch, from per-request device tensors built once: no host sync).
    structured outputs: rows with a grammar matcher get -inf on every id the grammar does not allow
    now (eos only where the grammar accepts): the bitmask is filled on the host and applied on the
    device by one op (amd_llama4/structured/bitmask.py), before penalties, temperature and logprobs.
 2. Penalties. repetition (over prompt + output ids): positive logits / r, negative logits * r.
    presence / frequency (over output ids): logit -= presence * [count > 0] + frequency * count.
 3. Logprobs (only when params.logprobs is not None): log_softmax of the logits after steps 1-2 and
    BEFORE temperature / top-k / top-p / min-p (vLLM's "raw" logprobs), so they describe the model's
    distribution, not the truncated sampling one. Returned: the sampled id's logprob and the top-N.
 4. temperature < 1e-5 (0 = greedy): argmax, ties -> lowest id. Otherwise logits / temperature, then
    top-k (keeps every id tied with the k-th largest), top-p (the smallest set of highest-probability
    ids whose probability sum reaches p; the top id is always kept), min-p (drop ids whose probability
    is below min_p * the top probability), and a draw from the softmax with the exponential-race
    (Gumbel) trick: argmax(p / q), q ~ Exp(1). A request with a seed draws its q from its own
    torch.Generator, always V numbers per step, so its tokens depend only on its seed and its logits,
    not on the batch; unseeded rows share the device's default generator.
Vectorised across the batch; per-row Python work only for seeded rows' random draws and for
building the penalty rows of requests that use penalties.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from amd_llama4.engine.sampling_params import SamplingParams
from amd_llama4.structured.bitmask import apply_token_bitmask_, fill_bitmask

_GREEDY_EPS = 1e-5  # temperatures below this are greedy (as vLLM), avoiding overflow in logits / T


@dataclass
class SampleResult:
    token_id: int
    logprob: float | None  # the sampled id's raw logprob; None unless params.logprobs is set
    top_logprobs: list[tuple[int, float]] | None  # top-N (id, logprob), highest first


@dataclass(eq=False)  # identity equality: holds tensors and a generator
class SamplingState:
    """Per-request sampling state. The engine calls `append(token_id)` for every sampled id and then
    `check_stop(token_id)`. matcher: the sample's GrammarMatcher (params.structured_outputs; the
    engine attaches it), advanced by append."""

    params: SamplingParams
    prompt_token_ids: list[int]
    eos_token_ids: list[int]
    output_token_ids: list[int] = field(default_factory=list, init=False)
    generator: torch.Generator | None = field(default=None, init=False, repr=False)
    # Penalty state, only for requests that use penalties: dense per-vocab output-token counts and
    # a prompt-id mask on the logits' device, updated with the ids appended since the last step.
    _counts: torch.Tensor | None = field(default=None, init=False, repr=False)  # [V] int32
    _prompt_mask: torch.Tensor | None = field(default=None, init=False, repr=False)  # [V] bool
    _pending: list[int] = field(default_factory=list, init=False, repr=False)
    _bias: tuple[torch.Tensor, torch.Tensor] | None = field(default=None, init=False, repr=False)  # ids, values
    matcher: object | None = field(default=None, repr=False)  # structured.backend.GrammarMatcher

    def __post_init__(self) -> None:
        self.prompt_token_ids = list(self.prompt_token_ids)
        self.eos_token_ids = list(self.eos_token_ids)
        p = self.params
        self.uses_penalties = (p.repetition_penalty != 1.0 or p.presence_penalty != 0.0
                               or p.frequency_penalty != 0.0)
        self.greedy = p.temperature < _GREEDY_EPS
        # greedy with nothing that edits the logits or asks for logprobs (matcher, min_tokens: per step)
        self._plain_greedy = (self.greedy and not self.uses_penalties and not p.logit_bias
                              and p.logprobs is None)
        if p.seed is not None:
            self.generator = torch.Generator().manual_seed(p.seed)
        # ids that min_tokens suppresses (vLLM: eos only when it is a stop condition)
        self._min_tokens_ids = list(dict.fromkeys(
            list(p.stop_token_ids) + ([] if p.ignore_eos else self.eos_token_ids)))

    def append(self, token_id: int) -> None:
        self.output_token_ids.append(int(token_id))
        if self.matcher is not None:
            self.matcher.accept(token_id)
        if self.uses_penalties:
            self._pending.append(int(token_id))

    def check_stop(self, token_id: int) -> tuple[bool, str | None, int | None]:
        """Call after append(token_id). Returns (finished, "stop" | "length" | None, stop_reason);
        stop_reason is the id for stop_token_ids and None for eos (as vLLM). Stop strings are the
        detokenizer's job; the engine also has to stop at the model's context length."""
        p = self.params
        n = len(self.output_token_ids)
        if self.matcher is not None and self.matcher.terminated:  # nothing more can follow: stop (even
            return True, "stop", None  # before min_tokens) without spending a step on eos
        if n < p.min_tokens:
            return False, None, None
        if token_id in p.stop_token_ids:
            return True, "stop", token_id
        if not p.ignore_eos and token_id in self.eos_token_ids:
            return True, "stop", None
        if p.max_tokens is not None and n >= p.max_tokens:
            return True, "length", None
        return False, None, None

    @property
    def argmax_only(self) -> bool:
        """This step's token is the argmax of the raw logits: greedy, no logprobs, and no step of the
        pipeline changes this row (bias, penalties, grammar, min_tokens suppression)."""
        return self._plain_greedy and self.matcher is None and not self.suppress_ids

    @property
    def suppress_ids(self) -> list[int]:
        """Ids whose logits are -inf this step (min_tokens not yet reached)."""
        return self._min_tokens_ids if len(self.output_token_ids) < self.params.min_tokens else []

    def generator_for(self, device: torch.device) -> torch.Generator | None:
        """The seeded generator, moved (re-seeded) once to the logits' device on first use."""
        if self.generator is not None and self.generator.device != device:
            self.generator = torch.Generator(device=device).manual_seed(self.params.seed)
        return self.generator

    def bias_tensors(self, device: torch.device, vocab: int) -> tuple[torch.Tensor, torch.Tensor]:
        """logit_bias as (ids [K] long, biases [K] fp32) on `device`, built on first use; ids outside
        the vocabulary (the API refuses them) are dropped."""
        if self._bias is None or self._bias[0].device != device:
            items = [(t, b) for t, b in (self.params.logit_bias or {}).items() if 0 <= t < vocab]
            ids = torch.tensor([t for t, _ in items], dtype=torch.long).to(device, non_blocking=True)
            vals = torch.tensor([b for _, b in items], dtype=torch.float32).to(device, non_blocking=True)
            self._bias = (ids, vals)
        return self._bias

    def penalty_tensors(self, device: torch.device, vocab: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(output counts [V] int32, prompt mask [V] bool), brought up to date incrementally."""
        if self._counts is None or self._counts.device != device or self._counts.numel() != vocab:
            self._counts = torch.zeros(vocab, dtype=torch.int32, device=device)
            self._prompt_mask = torch.zeros(vocab, dtype=torch.bool, device=device)
            ids = [t for t in self.prompt_token_ids if 0 <= t < vocab]
            if ids:
                self._prompt_mask[torch.tensor(ids, device=device)] = True
            self._pending = list(self.output_token_ids)
        ids = [t for t in self._pending if 0 <= t < vocab]
        if ids:
            idx = torch.tensor(ids, device=device)
            self._counts.index_put_((idx,), torch.ones_like(idx, dtype=torch.int32), accumulate=True)
        self._pending.clear()
        return self._counts, self._prompt_mask


class Sampler:
    def __call__(self, logits: torch.Tensor, states: list[SamplingState]) -> list[SampleResult]:
        if logits.dim() != 2:
            raise ValueError(f"Sampler: logits must be [B, V], got shape {tuple(logits.shape)}")
        if logits.shape[0] != len(states):
            raise ValueError(f"Sampler: logits has {logits.shape[0]} rows but {len(states)} states")
        if not logits.is_floating_point():
            raise ValueError(f"Sampler: logits must be floating point, got {logits.dtype}")
        B, V = logits.shape
        if B == 0:
            return []
        if all(s.argmax_only for s in states):
            # the full pipeline's tokens (its fp32 copy is exact: the same first maximum) without
            # its per-step Python; the usual batch-1 decode (host cost matters at ~3 ms a token)
            return [SampleResult(t, None, None) for t in logits.argmax(dim=-1).tolist()]
        dev = logits.device
        logits = logits.to(torch.float32, copy=True)  # logits: [B, V]; the caller's buffer stays intact
        _suppress(logits, states)
        _apply_logit_bias(logits, states)
        mask = fill_bitmask([s.matcher for s in states], V, dev)  # None: no row is constrained
        if mask is not None:
            apply_token_bitmask_(logits, mask)
        _apply_penalties(logits, states)

        lp_rows = [i for i, s in enumerate(states) if s.params.logprobs is not None]
        logprobs = None
        if lp_rows:
            lp_sel = logits if len(lp_rows) == B else logits[_idx(lp_rows, dev)]
            logprobs = torch.log_softmax(lp_sel, dim=-1)  # [L, V]

        greedy_rows = [i for i, s in enumerate(states) if s.greedy]
        if len(greedy_rows) == B:
            tokens = logits.argmax(dim=-1)  # first maximum = lowest id on ties
        else:
            tokens = torch.empty(B, dtype=torch.long, device=dev)
            if greedy_rows:
                g = _idx(greedy_rows, dev)
                tokens[g] = logits[g].argmax(dim=-1)
            rows = [i for i, s in enumerate(states) if not s.greedy]
            sub = logits if len(rows) == B else logits[_idx(rows, dev)]
            tokens_s = _sample(sub, [states[i] for i in rows])
            if len(rows) == B:
                tokens = tokens_s
            else:
                tokens[_idx(rows, dev)] = tokens_s

        if logprobs is None:
            return [SampleResult(t, None, None) for t in tokens.tolist()]  # the step's one device->host copy
        L = len(lp_rows)
        chosen = logprobs.gather(1, tokens[_idx(lp_rows, dev)].unsqueeze(1)).squeeze(1)  # [L]
        n_max = min(max(states[i].params.logprobs for i in lp_rows), V)
        tv, ti = logprobs.topk(n_max, dim=-1)  # [L, n_max], sorted, highest first
        # One device->host copy for everything: float64 holds the ids (< 2**53) and the fp32
        # logprobs exactly.
        packed = torch.cat([tokens.double(), chosen.double(), ti.double().reshape(-1),
                            tv.double().reshape(-1)]).tolist()
        token_list = [int(t) for t in packed[:B]]
        chosen_l = packed[B:B + L]
        top_i, top_v = packed[B + L:B + L + L * n_max], packed[B + L + L * n_max:]
        results = [SampleResult(t, None, None) for t in token_list]
        for j, i in enumerate(lp_rows):
            n = states[i].params.logprobs
            row = slice(j * n_max, j * n_max + n)
            results[i].logprob = chosen_l[j]
            results[i].top_logprobs = [(int(t), v) for t, v in zip(top_i[row], top_v[row])]
        return results


def _idx(rows: list[int], device: torch.device) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.long, device=device)


def _suppress(logits: torch.Tensor, states: list[SamplingState]) -> None:
    """min_tokens: -inf for eos / stop ids, one scatter for the whole batch."""
    V = logits.shape[1]
    rows, cols = [], []
    for i, s in enumerate(states):
        for t in s.suppress_ids:
            if 0 <= t < V:
                rows.append(i)
                cols.append(t)
    if rows:
        logits[_idx(rows, logits.device), _idx(cols, logits.device)] = float("-inf")


def _apply_logit_bias(logits: torch.Tensor, states: list[SamplingState]) -> None:
    rows = [i for i, s in enumerate(states) if s.params.logit_bias]
    if not rows:
        return
    B, V = logits.shape
    parts = [states[i].bias_tensors(logits.device, V) for i in rows]
    flat_ids = torch.cat([ids + i * V for i, (ids, _) in zip(rows, parts)])  # [sum K] into logits.view(-1)
    logits.view(-1).index_add_(0, flat_ids, torch.cat([v for _, v in parts]))


def _apply_penalties(logits: torch.Tensor, states: list[SamplingState]) -> None:
    rows = [i for i, s in enumerate(states) if s.uses_penalties]
    if not rows:
        return
    dev, V = logits.device, logits.shape[1]
    counts, prompt = zip(*(states[i].penalty_tensors(dev, V) for i in rows))
    counts = torch.stack(counts).float()  # [P, V]
    seen = torch.stack(prompt) | (counts > 0)  # [P, V] prompt + output ids
    col = lambda name: torch.tensor([getattr(states[i].params, name) for i in rows],  # noqa: E731
                                    dtype=torch.float32, device=dev).unsqueeze(1)  # [P, 1]
    rep, pres, freq = col("repetition_penalty"), col("presence_penalty"), col("frequency_penalty")
    idx = _idx(rows, dev)
    x = logits[idx]  # [P, V]
    x = torch.where(seen, torch.where(x > 0, x / rep, x * rep), x)
    x = x - freq * counts - pres * (counts > 0).float()
    logits[idx] = x


def _sample(logits: torch.Tensor, states: list[SamplingState]) -> torch.Tensor:
    """logits: [S, V] of non-greedy rows (modified in place). Returns sampled ids [S]."""
    S, V = logits.shape
    dev = logits.device
    vec = lambda xs: torch.tensor(xs, dtype=torch.float32, device=dev).unsqueeze(1)  # noqa: E731
    logits.div_(vec([s.params.temperature for s in states]))

    ks = [s.params.top_k if 0 < s.params.top_k < V else 0 for s in states]
    ps = [s.params.top_p for s in states]
    if any(ks) or any(p < 1.0 for p in ps):
        logits = _top_k_top_p(logits, ks, ps)
    min_ps = [s.params.min_p for s in states]
    if any(m > 0.0 for m in min_ps):
        probs = torch.softmax(logits, dim=-1)
        thresh = probs.amax(dim=-1, keepdim=True) * vec(min_ps)  # [S, 1]
        logits = logits.masked_fill(probs < thresh, float("-inf"))

    probs = torch.softmax(logits, dim=-1)  # [S, V]
    q = torch.empty_like(probs).exponential_()  # unseeded rows: the device's default generator
    for i, s in enumerate(states):
        g = s.generator_for(dev)
        if g is not None:
            q[i].exponential_(generator=g)  # always V draws: independent of the batch
    q.clamp_min_(torch.finfo(q.dtype).tiny)  # q == 0 would turn a filtered 0-prob id into NaN
    return (probs / q).argmax(dim=-1)


def _top_k_top_p(logits: torch.Tensor, ks: list[int], ps: list[float]) -> torch.Tensor:
    """ks: 0 = off; ps: 1 = off. Returns the filtered logits (-inf outside the kept set)."""
    S, V = logits.shape
    dev = logits.device
    neg_inf = float("-inf")
    if not any(ks) and all(p >= 1.0 for p in ps):
        return logits
    if all(p >= 1.0 for p in ps):
        # top-k only: a partial top-k instead of a full sort.
        k_max = max(ks)
        vals = logits.topk(k_max, dim=-1).values  # [S, k_max], sorted
        k_idx = torch.tensor([max(k, 1) - 1 for k in ks], device=dev).unsqueeze(1)
        thresh = vals.gather(1, k_idx)  # [S, 1] k-th largest
        off = torch.tensor([k == 0 for k in ks], device=dev).unsqueeze(1)
        thresh = thresh.masked_fill(off, neg_inf)
        return logits.masked_fill(logits < thresh, neg_inf)

    srt, order = logits.sort(dim=-1, descending=True)  # [S, V]
    if any(ks):
        k_idx = torch.tensor([(k if k else V) - 1 for k in ks], device=dev).unsqueeze(1)
        srt = srt.masked_fill(srt < srt.gather(1, k_idx), neg_inf)
    if any(p < 1.0 for p in ps):
        probs = torch.softmax(srt, dim=-1)
        before = probs.cumsum(dim=-1) - probs  # probability mass of the higher-ranked ids
        # p = 1 rows: a bound above any rounding of the cumulative sum, so nothing is dropped
        p_t = torch.tensor([p if p < 1.0 else 2.0 for p in ps], device=dev).unsqueeze(1)
        srt = srt.masked_fill(before >= p_t, neg_inf)
    return torch.empty_like(logits).scatter_(1, order, srt)
