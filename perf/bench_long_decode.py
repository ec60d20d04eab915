"""Decode-step time with one long sequence among short ones: does a step cost follow the tokens in
the cache (paged attention in place) or batch x longest sequence (a dense copy of the cache)?

A wide-KV random model (hidden 1024, 16 heads, 8 KV heads, head_dim 128, 4 layers, 4 experts top-1),
fp32 on CPU, through engine.runner.ModelRunner. Two steps alternate, median of each: `short`, the
decode of 16 short sequences (32-token prompts); `mixed`, the same 16 plus one 4,000-token sequence.
Prints both times and the ratio mixed / short (issue 14's target: <= 4x; a dense gather gave 45x).
Run the code before a change with PYTHONPATH pointing at its checkout for the baseline figure.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch


def wide_kv_config(hidden=1024, layers=4, experts=4, max_len=8192):
    from amd_llama4.config import Llama4Config

    return Llama4Config(vocab_size=4096, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=16,
                        num_key_value_heads=8, head_dim=128, intermediate_size=hidden, intermediate_size_mlp=2 * hidden,
                        num_local_experts=experts, num_experts_per_tok=1, rope_scaling=None, bos_token_id=1,
                        eos_token_id=2, pad_token_id=0, max_position_embeddings=max_len)


class DecodeBench:
    """A runner over a paged cache holding `short` sequences of `short_len` tokens and one of `long_len`."""

    def __init__(self, cfg, short: int, short_len: int, long_len: int, block_size: int = 16, prefill_piece: int = 512,
                 steps: int = 64):
        try:
            from amd_llama4.engine.block_manager import SeqBlocks
        except ImportError:  # a checkout from before block_manager.py (the baseline run)
            from amd_llama4.engine.kv_cache import SeqBlocks
        from amd_llama4.engine.kv_cache import KVCache
        from amd_llama4.engine.runner import ModelRunner
        from amd_llama4.model.llama4 import Llama4ForCausalLM

        self.model = Llama4ForCausalLM(cfg).init_random(seed=0).eval()
        blocks = short * -(-(short_len + steps) // block_size) + -(-(long_len + steps) // block_size) + 4
        self.cache = KVCache(cfg, blocks, block_size, torch.float32, "cpu")
        self.runner = ModelRunner(self.model, self.cache, "cpu")
        g = torch.Generator().manual_seed(0)
        self.seqs, self.pos = [], []
        for n in [short_len] * short + [long_len]:
            seq, ids = SeqBlocks(), torch.randint(3, cfg.vocab_size, (n,), generator=g).tolist()
            for p in range(0, n, prefill_piece):
                self._run([(seq, ids[p:p + prefill_piece], p)])
            self.seqs.append(seq)
            self.pos.append(n)

    def _run(self, pieces):
        from amd_llama4.engine.runner import StepItem

        for seq, toks, start in pieces:
            self.cache.reserve(seq, start, start + len(toks))
        return self.runner.execute([StepItem(seq, toks, start) for seq, toks, start in pieces])

    def decode_step(self, which: list[int]) -> float:
        """One decode step of sequences `which` (token 7 each); -> seconds."""
        pieces = [(self.seqs[i], [7], self.pos[i]) for i in which]
        t0 = time.perf_counter()
        self._run(pieces)
        dt = time.perf_counter() - t0
        for i in which:
            self.pos[i] += 1
        return dt


def measure(short=16, short_len=32, long_len=4000, steps=8, warmup=2, **cfg_kw) -> dict:
    cfg = wide_kv_config(max_len=max(8192, long_len + 2 * (steps + warmup) + 16), **cfg_kw)
    bench = DecodeBench(cfg, short, short_len, long_len, steps=2 * (steps + warmup))
    shorts, mixed = list(range(short)), list(range(short + 1))
    for _ in range(warmup):
        bench.decode_step(shorts)
        bench.decode_step(mixed)
    t_short, t_mixed = [], []
    for _ in range(steps):  # interleaved: a noisy machine slows both alike
        t_short.append(bench.decode_step(shorts))
        t_mixed.append(bench.decode_step(mixed))
    a, b = statistics.median(t_short), statistics.median(t_mixed)
    return {"short_ms": a * 1e3, "mixed_ms": b * 1e3, "ratio": b / a, "short": short, "short_len": short_len,
            "long_len": long_len, "steps": steps, "threads": torch.get_num_threads(),
            "short_ms_all": [round(t * 1e3, 2) for t in t_short], "mixed_ms_all": [round(t * 1e3, 2) for t in t_mixed]}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--short", type=int, default=16, help="short sequences in both steps")
    ap.add_argument("--short-len", type=int, default=32)
    ap.add_argument("--long-len", type=int, default=4000)
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--steps", type=int, default=8, help="timed steps of each kind (medians reported)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    r = measure(args.short, args.short_len, args.long_len, args.steps, hidden=args.hidden, layers=args.layers)
    print(f"decode step, {args.short} x {args.short_len}-token sequences: {r['short_ms']:.1f} ms; "
          f"plus one {args.long_len}-token sequence: {r['mixed_ms']:.1f} ms; ratio {r['ratio']:.2f}x "
          f"(target <= 4x; {r['threads']} threads)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(r, f, indent=1)
    return r


if __name__ == "__main__":
    main()
