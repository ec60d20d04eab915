"""Prefill time of a repeated 2,000-token prompt with automatic prefix caching on vs off.

A random model (hidden 512, 4 layers, 8 heads / 2 KV heads, 4 experts top-1, attention chunk 8192
as released; --chunk 1024 makes the prompt cross a chunk boundary), fp32 on CPU, through
LLMEngine. Each side gets its own engine over the same weights; a warm-up run of the prompt fills
the cache, then `--repeats` timed runs alternate between the sides (time to the first token, one
generated token), medians reported. Prints both and the ratio off / on (issue 14's target: >= 4x).
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch


def _prefill_time(eng, prompt, rid) -> float:
    from amd_llama4 import SamplingParams

    t0 = time.perf_counter()
    eng.add_request(rid, prompt, SamplingParams(temperature=0, max_tokens=1, ignore_eos=True))
    while eng.has_unfinished():
        eng.step()
    return time.perf_counter() - t0


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--prompt-len", type=int, default=2000)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--chunk", type=int, default=8192)
    ap.add_argument("--block-size", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    from amd_llama4.config import Llama4Config
    from amd_llama4.engine.llm_engine import EngineArgs, LLMEngine
    from amd_llama4.model.llama4 import Llama4ForCausalLM

    h = args.hidden
    cfg = Llama4Config(vocab_size=4096, hidden_size=h, num_hidden_layers=args.layers, num_attention_heads=8,
                       num_key_value_heads=2, head_dim=h // 8, intermediate_size=h, intermediate_size_mlp=2 * h,
                       num_local_experts=4, num_experts_per_tok=1, rope_scaling=None, attention_chunk_size=args.chunk,
                       bos_token_id=1, eos_token_id=2, pad_token_id=0, max_position_embeddings=8192)
    model = Llama4ForCausalLM(cfg).init_random(seed=0).eval()
    prompt = torch.randint(3, cfg.vocab_size, (args.prompt_len,), generator=torch.Generator().manual_seed(0)).tolist()
    engines = {on: LLMEngine(EngineArgs(model="random", block_size=args.block_size, enable_prefix_caching=on,
                                        kv_cache_memory_bytes=1 << 30), model=model) for on in (False, True)}
    times = {False: [], True: []}
    for on, eng in engines.items():
        _prefill_time(eng, prompt, "warm-up")
    for r in range(args.repeats):
        for on, eng in engines.items():
            times[on].append(_prefill_time(eng, prompt, str(r)))
    off, on = statistics.median(times[False]), statistics.median(times[True])
    stats = engines[True].stats()
    result = {"config": vars(args), "threads": torch.get_num_threads(), "prefill_s_off": off, "prefill_s_on": on,
              "speedup": off / on, "runs_off": times[False], "runs_on": times[True],
              "prefix_cache_queries": stats["prefix_cache_queries"], "prefix_cache_hits": stats["prefix_cache_hits"]}
    print(f"{args.prompt_len}-token repeated prompt, prefill: caching off {off * 1e3:.1f} ms, "
          f"on {on * 1e3:.1f} ms -> {off / on:.1f}x (target >= 4x); hits {stats['prefix_cache_hits']} of "
          f"{stats['prefix_cache_queries']} tokens queried")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
