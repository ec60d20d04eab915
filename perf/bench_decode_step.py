"""Batch-1 CPU decode: the native decode step (engine/cpu_decode.py) against the eager op-by-op step,
in one process, on perf/local_model.py's random Scout-shaped checkpoint; and where the native step's
time goes (phases timed inside csrc/cpu/decode_step.cpp), with the weight bytes each phase streams
per token and the GB/s that makes.

Both sides run LLM.generate (greedy, ignore_eos) after one warm-up; per type the two alternate
--repeats times and the best of each is reported (the machine is shared and noisy). No llama.cpp
needed (perf/bench_local.py compares with llama.cpp).

    python perf/bench_decode_step.py [--types f32,bf16,int4,fp8] [--dir DIR] [--threads 2]
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "2")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import local_model  # noqa: E402

TYPES = {  # name -> (dtype, quantization)
    "f32": ("float32", None),
    "bf16": ("bfloat16", None),
    "int4": ("bfloat16", dict(method="int4", group_size=32)),
    "fp8": ("bfloat16", dict(method="fp8", fp8_format="e4m3fn")),
}


def _llm(folder, kind, eager, ctx):
    from amd_llama4 import LLM
    from amd_llama4.config import QuantConfig

    dtype, q = TYPES[kind]
    return LLM(str(folder), dtype=dtype, quantization=None if q is None else QuantConfig(**q), max_model_len=ctx,
               max_num_seqs=1, kv_cache_memory_bytes=64 << 20, enable_prefix_caching=False, enforce_eager=eager)


def _timed(llm, prompt, n):
    from amd_llama4 import SamplingParams

    t0 = time.perf_counter()
    llm.generate([prompt], SamplingParams(temperature=0, max_tokens=1, ignore_eos=True))
    t1 = time.perf_counter()
    out = llm.generate([prompt], SamplingParams(temperature=0, max_tokens=n + 1, ignore_eos=True))
    t2 = time.perf_counter()
    return max((t2 - t1) - (t1 - t0), 1e-9) / n, out[0].outputs[0].token_ids


def _nbytes(*ts):
    return sum(t.numel() * t.element_size() for t in ts if t is not None)


def phase_bytes(model) -> dict[str, int]:
    """Weight bytes each profiled phase reads per token at batch 1 (top-k experts of every MoE layer)."""
    from amd_llama4.model.llama4 import MoE

    b = dict.fromkeys(("qkv proj", "o proj", "shared expert / mlp", "router+topk", "routed experts", "lm head"), 0)
    for layer in model.model.layers:
        att, ff = layer.self_attn, layer.feed_forward
        b["qkv proj"] += sum(_nbytes(*m.parameters()) for m in (att.q_proj, att.k_proj, att.v_proj))
        b["o proj"] += _nbytes(*att.o_proj.parameters())
        mlp = ff.shared_expert if isinstance(ff, MoE) else ff
        b["shared expert / mlp"] += _nbytes(*mlp.parameters())
        if isinstance(ff, MoE):
            b["router+topk"] += _nbytes(*ff.router.parameters())
            ex = list(ff.experts.parameters())
            b["routed experts"] += ff.top_k * _nbytes(*ex) // ex[0].shape[0]
    b["lm head"] = _nbytes(model.lm_head.weight)
    return b


def bench(kind, folder, args, prompt):
    ctx = len(prompt) + args.new_tokens + 16
    llms = {eager: _llm(folder, kind, eager, ctx) for eager in (False, True)}
    native = llms[False].engine.runner.native_step
    if native is None:
        from amd_llama4.engine import cpu_decode

        eng = llms[False].engine
        return {"type": kind, "error": f"no native step: {cpu_decode.unsupported(eng.model, eng.cache)}"}
    best = {False: float("inf"), True: float("inf")}
    toks = {}
    for llm in llms.values():
        _timed(llm, prompt, 4)
    for _ in range(args.repeats):
        for eager, llm in llms.items():
            t, toks[eager] = _timed(llm, prompt, args.new_tokens)
            best[eager] = min(best[eager], t)
    native.step.set_profile(True)
    native.step.take_profile()
    _timed(llms[False], prompt, args.new_tokens)
    prof = dict(native.step.take_profile())
    native.step.set_profile(False)
    steps = prof.pop("steps")
    nbytes = phase_bytes(llms[False].engine.model)
    row = {"type": kind, "native_ms": best[False] * 1e3, "eager_ms": best[True] * 1e3,
           "native_tok_s": 1 / best[False], "eager_tok_s": 1 / best[True], "speedup": best[True] / best[False],
           "same_tokens": toks[False] == toks[True], "weight_mb_per_token": sum(nbytes.values()) / 1e6,
           "phases": {k: {"ms": v / steps * 1e3, **({"gb_s": nbytes[k] / (v / steps) / 1e9} if nbytes.get(k) else {})}
                      for k, v in prof.items()}}
    for llm in llms.values():
        llm.shutdown()
    return row


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--types", default="f32,bf16,int4,fp8")
    ap.add_argument("--dir", default=str(local_model.CACHE / "bench_local"), help="model files (built once)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    types = [t for t in args.types.split(",") if t]
    if bad := [t for t in types if t not in TYPES]:
        raise SystemExit(f"--types: unknown {bad}; known: {list(TYPES)}")
    torch.set_num_threads(args.threads)
    folder = Path(args.dir) / "hf"
    if not (folder / "config.json").exists():
        local_model.build_checkpoint(folder)
    prompt = torch.randint(10, 400, (args.prompt_len,), generator=torch.Generator().manual_seed(0)).tolist()
    print(f"model {folder}; threads {args.threads}; prompt {args.prompt_len}, decode {args.new_tokens}; "
          f"best of {args.repeats} alternating repeats")
    rows = []
    for kind in types:
        row = bench(kind, folder, args, prompt)
        rows.append(row)
        if "error" in row:
            print(f"{kind:5s} {row['error']}")
            continue
        print(f"{kind:5s} native {row['native_tok_s']:6.1f} tok/s ({row['native_ms']:.2f} ms) | eager "
              f"{row['eager_tok_s']:6.1f} tok/s ({row['eager_ms']:.2f} ms) | {row['speedup']:.2f}x | same tokens "
              f"{row['same_tokens']} | weights {row['weight_mb_per_token']:.1f} MB/token")
        for name, p in row["phases"].items():
            gbs = f"  {p['gb_s']:5.1f} GB/s" if "gb_s" in p else ""
            print(f"        {name:24s} {p['ms']:6.3f} ms{gbs}")
    return rows


if __name__ == "__main__":
    main()
