#!/usr/bin/env python
"""Concurrency sweep against any OpenAI-compatible endpoint (ours, vLLM, SGLang, ...).

    python perf/bench_serving.py --base-url http://HOST:8000 --model scout \
        --num-prompts 200 --max-tokens 128 --concurrency 1,4,16,64 --out serving.json

Streams /v1/completions (or /v1/chat/completions with --endpoint chat) with asyncio + httpx and
measures, per concurrency level: request and output-token throughput, time to first token (TTFT),
time per output token (TPOT), inter-token latency (ITL) and end-to-end latency (mean, median, std,
percentiles). Output keys follow vLLM's benchmark_serving (request_throughput, output_throughput,
mean_ttft_ms, p99_ttft_ms, mean_itl_ms, p99_itl_ms, completed, failed, ...), one dict per level
under "results". Every request has a timeout, so a sweep is bounded in time.
Output tokens: `usage.completion_tokens` when the server reports it, else one per streamed chunk.

Long prompts among short chats (--long-prompts K --long-input-len W): K of the prompts, spread
evenly, get W words. Each level then also reports the ITL of the other requests' tokens that arrive
while some long prompt is being prefilled (from its send to its first token): p99 of those against
the median ITL of all (`itl_p99_during_long_prefill_over_median`; issue 14's target <= 3: a long
prefill must not stall the other streams).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import statistics
import sys
import time
from dataclasses import dataclass, field

SCHEMA = "amd-llama4/bench_serving/v1"
_WORDS = ("the quick brown fox jumps over lazy dog while seven bright stars shine above a quiet harbour "
          "where ships wait for morning tide and sailors tell stories about distant islands mountains rivers "
          "forests deserts cities bridges towers gardens libraries markets").split()


@dataclass
class RequestResult:
    ok: bool = False
    prompt_tokens: int | None = None
    output_tokens: int = 0
    ttft_s: float | None = None
    latency_s: float | None = None
    itl_s: list[float] = field(default_factory=list)
    error: str | None = None
    long: bool = False  # one of the --long-prompts
    t_send: float = 0.0  # perf_counter() at send
    token_t: list[float] = field(default_factory=list)  # perf_counter() of each streamed text chunk


def make_prompts(n: int, input_len: int, seed: int, long_idx: frozenset = frozenset(), long_len: int = 0) -> list[str]:
    """`n` synthetic prompts of `input_len` words (`long_len` for the indices in long_idx),
    deterministic for a seed (distinct from the first word on, so no prefix cache hits)."""
    rng = random.Random(seed)
    return [f"Request {i}: " + " ".join(rng.choice(_WORDS) for _ in range(long_len if i in long_idx else input_len))
            for i in range(n)]


def long_indices(n: int, k: int) -> frozenset:
    """k of n request indices, spread evenly (the first at 0)."""
    return frozenset(i * n // k for i in range(k)) if k else frozenset()


def _text_of(chunk: dict, chat: bool) -> str:
    choices = chunk.get("choices") or []
    if not choices:
        return ""
    c = choices[0]
    if chat:
        return (c.get("delta") or {}).get("content") or ""
    return c.get("text") or ""


async def one_request(client, url: str, payload: dict, headers: dict, chat: bool, timeout: float,
                      long: bool = False) -> RequestResult:
    res = RequestResult(long=long)
    t0 = res.t_send = time.perf_counter()

    async def go():
        last = None
        chunks, done = 0, False
        async with client.stream("POST", url, json=payload, headers=headers) as resp:
            if resp.status_code != 200:
                body = (await resp.aread()).decode(errors="replace")[:300]
                raise RuntimeError(f"HTTP {resp.status_code}: {body}")
            async for line in resp.aiter_lines():
                line = line.strip()
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    done = True
                    break
                chunk = json.loads(data)
                if chunk.get("error"):
                    raise RuntimeError(f"stream error: {chunk['error']}")
                usage = chunk.get("usage")
                if usage:
                    res.prompt_tokens = usage.get("prompt_tokens", res.prompt_tokens)
                    if usage.get("completion_tokens") is not None:
                        res.output_tokens = usage["completion_tokens"]
                if _text_of(chunk, chat):
                    now = time.perf_counter()
                    if last is None:
                        res.ttft_s = now - t0
                    else:
                        res.itl_s.append(now - last)
                    last = now
                    res.token_t.append(now)
                    chunks += 1
        res.output_tokens = res.output_tokens or chunks
        res.latency_s = time.perf_counter() - t0
        if not (chunks or done):
            raise RuntimeError("stream ended without any data event")
        res.ok = True

    try:
        await asyncio.wait_for(go(), timeout)
    except asyncio.TimeoutError:
        res.ok, res.error = False, f"timeout after {timeout} s"
    except Exception as e:  # noqa: BLE001 - every failure is counted, the sweep goes on
        res.ok, res.error = False, f"{type(e).__name__}: {e}"[:300]
    return res


def percentile(xs: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    s = sorted(xs)
    if not s:
        return float("nan")
    pos = (len(s) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def _stats(prefix: str, xs_ms: list[float], pcts: list[float]) -> dict:
    if not xs_ms:
        return {f"mean_{prefix}_ms": None, f"median_{prefix}_ms": None, f"std_{prefix}_ms": None,
                **{f"p{_p(p)}_{prefix}_ms": None for p in pcts}}
    return {f"mean_{prefix}_ms": statistics.fmean(xs_ms), f"median_{prefix}_ms": statistics.median(xs_ms),
            f"std_{prefix}_ms": statistics.pstdev(xs_ms), **{f"p{_p(p)}_{prefix}_ms": percentile(xs_ms, p) for p in pcts}}


def _p(p: float) -> str:
    return str(int(p)) if float(p).is_integer() else str(p)


def metrics(results: list[RequestResult], duration: float, pcts: list[float]) -> dict:
    ok = [r for r in results if r.ok]
    out_tokens = sum(r.output_tokens for r in ok)
    in_known = [r.prompt_tokens for r in ok if r.prompt_tokens is not None]
    ttft = [r.ttft_s * 1e3 for r in ok if r.ttft_s is not None]
    tpot = [(r.latency_s - r.ttft_s) / (r.output_tokens - 1) * 1e3 for r in ok
            if r.ttft_s is not None and r.output_tokens > 1]
    itl = [x * 1e3 for r in ok for x in r.itl_s]
    e2el = [r.latency_s * 1e3 for r in ok if r.latency_s is not None]
    total_in = sum(in_known) if len(in_known) == len(ok) and ok else None
    m = {"duration": duration, "completed": len(ok), "failed": len(results) - len(ok),
         "total_input_tokens": total_in, "total_output_tokens": out_tokens,
         "request_throughput": len(ok) / duration if duration > 0 else 0.0,
         "output_throughput": out_tokens / duration if duration > 0 else 0.0,
         "total_token_throughput": ((total_in or 0) + out_tokens) / duration if duration > 0 else 0.0}
    for name, xs in (("ttft", ttft), ("tpot", tpot), ("itl", itl), ("e2el", e2el)):
        m.update(_stats(name, xs, pcts))
    if any(r.long for r in results):
        m.update(long_prefill_itl(ok, itl, pcts))
    errors = [r.error for r in results if r.error]
    m["errors"] = sorted(set(errors))[:5]
    return m


def long_prefill_itl(ok: list[RequestResult], itl_ms: list[float], pcts: list[float]) -> dict:
    """ITL (ms) of the short requests' tokens whose gap overlaps a long prompt's prefill (send to
    first token), against the median ITL of all requests."""
    windows = [(r.t_send, r.t_send + r.ttft_s) for r in ok if r.long and r.ttft_s is not None]
    during = [(b - a) * 1e3 for r in ok if not r.long for a, b in zip(r.token_t, r.token_t[1:])
              if any(a < w1 and b > w0 for w0, w1 in windows)]
    m = {"num_long_prompts": sum(r.long for r in ok), "num_itl_during_long_prefill": len(during)}
    m.update(_stats("itl_during_long_prefill", during, pcts))
    med = statistics.median(itl_ms) if itl_ms else None
    m["itl_p99_during_long_prefill_over_median"] = (percentile(during, 99) / med) if during and med else None
    return m


async def run_level(args, prompts: list[str], concurrency: int, long_idx: frozenset = frozenset()) -> dict:
    import httpx

    chat = args.endpoint == "chat"
    url = args.base_url.rstrip("/") + ("/v1/chat/completions" if chat else "/v1/completions")
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    sem = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency + 1, max_keepalive_connections=concurrency + 1)
    timeout = httpx.Timeout(args.request_timeout, connect=min(10.0, args.request_timeout))
    deadline = time.perf_counter() + args.max_duration if args.max_duration else None

    def payload(p: str) -> dict:
        body = {"model": args.model, "max_tokens": args.max_tokens, "stream": True, "temperature": args.temperature}
        body.update({"messages": [{"role": "user", "content": p}]} if chat else {"prompt": p})
        if args.ignore_eos:
            body["ignore_eos"] = True
        if args.include_usage:
            body["stream_options"] = {"include_usage": True}
        return body

    async with httpx.AsyncClient(timeout=timeout, limits=limits, trust_env=False) as client:
        for _ in range(args.warmup_requests):
            await one_request(client, url, payload(prompts[0]), headers, chat, args.request_timeout)

        async def worker(i: int, p: str) -> RequestResult | None:
            async with sem:
                if deadline and time.perf_counter() > deadline:
                    return None  # not sent: the level ran out of time
                return await one_request(client, url, payload(p), headers, chat, args.request_timeout,
                                         i in long_idx)

        t0 = time.perf_counter()
        done = await asyncio.gather(*(worker(i, p) for i, p in enumerate(prompts)))
        duration = time.perf_counter() - t0
    sent = [r for r in done if r is not None]
    m = metrics(sent, duration, args.percentiles)
    return {"max_concurrency": concurrency, "num_prompts": len(prompts), "not_sent": len(done) - len(sent), **m}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base-url", required=True, help="e.g. http://127.0.0.1:8000 (without /v1)")
    p.add_argument("--model", required=True, help="model name the server expects")
    p.add_argument("--api-key", default=os.environ.get("OPENAI_API_KEY", ""))
    p.add_argument("--endpoint", choices=("completions", "chat"), default="completions")
    p.add_argument("--num-prompts", type=int, default=64, help="requests per concurrency level")
    p.add_argument("--input-len", type=int, default=128, help="words per synthetic prompt")
    p.add_argument("--long-prompts", type=int, default=0,
                   help="how many of the --num-prompts are long (spread evenly): a long-prompt mix")
    p.add_argument("--long-input-len", type=int, default=2000, help="words per long prompt")
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--concurrency", default="1,4,16,64", help="comma list of levels")
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--ignore-eos", action="store_true", help="send ignore_eos (vLLM / ours) for fixed lengths")
    p.add_argument("--include-usage", action="store_true",
                   help="send stream_options.include_usage to get exact token counts")
    p.add_argument("--request-timeout", type=float, default=120.0, help="seconds per request")
    p.add_argument("--max-duration", type=float, default=0, help="stop sending after S seconds per level (0 = no)")
    p.add_argument("--warmup-requests", type=int, default=1)
    p.add_argument("--percentiles", default="50,90,99")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="", help="JSON file (default: print JSON)")
    a = p.parse_args(argv)
    a.levels = [int(c) for c in a.concurrency.split(",") if c]
    a.percentiles = [float(x) for x in a.percentiles.split(",") if x]
    if any(c < 1 for c in a.levels) or a.num_prompts < 1:
        p.error("concurrency levels and --num-prompts must be >= 1")
    if not 0 <= a.long_prompts <= a.num_prompts:
        p.error(f"--long-prompts {a.long_prompts} must be in [0, --num-prompts {a.num_prompts}]")
    return a


def main(argv=None) -> int:
    args = parse_args(argv)
    long_idx = long_indices(args.num_prompts, args.long_prompts)
    prompts = make_prompts(args.num_prompts, args.input_len, args.seed, long_idx, args.long_input_len)
    results = []
    for c in args.levels:
        r = asyncio.run(run_level(args, prompts, c, long_idx))
        results.append(r)
        mix = ""
        if "itl_p99_during_long_prefill_over_median" in r:
            ratio = r["itl_p99_during_long_prefill_over_median"]
            mix = (f"; during long prefills ITL p99 {_ms(r['p99_itl_during_long_prefill_ms'])} = "
                   f"{'-' if ratio is None else f'{ratio:.2f}'}x the median ITL")
        print(f"concurrency {c:>4}: {r['completed']}/{r['num_prompts']} ok, {r['request_throughput']:.2f} req/s, "
              f"{r['output_throughput']:.1f} tok/s, TTFT mean {_ms(r['mean_ttft_ms'])} p99 {_ms(r['p99_ttft_ms'])}, "
              f"ITL mean {_ms(r['mean_itl_ms'])} p99 {_ms(r['p99_itl_ms'])}{mix}", file=sys.stderr)
    cfg = {k: v for k, v in vars(args).items() if k != "api_key"}
    doc = {"schema": SCHEMA, "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "config": cfg, "results": results}
    text = json.dumps(doc, indent=1)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            f.write(text)
    else:
        print(text)
    return 0 if all(r["completed"] > 0 for r in results) else 1


def _ms(v) -> str:
    return "-" if v is None else f"{v:.1f} ms"

if __name__ == "__main__":
    sys.exit(main())
