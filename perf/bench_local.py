"""Batch-1 CPU decode and prefill, amd-llama4 against llama.cpp (llama-cpp-python), same weights.

The model is perf/local_model.py's random Scout-shaped checkpoint (hidden 1024, 8 layers, 16 experts
top-1, head_dim 128): a transformers folder for us and GGUFs written by llama.cpp's own converter
(Q4_0 by its quantizer) for llama.cpp. Per type, both models are loaded in this process and timed
with alternating repeats (the machine is shared and noisy: the BEST of --repeats is reported).

  ours:      LLM(folder, dtype, quantization) -> generate(token ids, greedy, ignore_eos), the engine's
             real path (scheduler, paged KV cache, sampler, detokenizer), prefix caching off so each
             repeat prefills; prefill = time of max_tokens=1, decode tok/s = new_tokens / (best time
             of 1 + new_tokens tokens - best prefill time). Decode steps run as one native call
             (engine/cpu_decode.py) unless --enforce-eager (the op-by-op step) or the type needs the
             eager step (the table says which ran).
  llama.cpp: Llama(gguf, n_threads, logits_all=False); prefill = eval(prompt); decode = eval(token)
             + argmax of the logits per token (greedy; f16 KV cache, llama.cpp's default).

Types (ours <- theirs): f32 <- F32, bf16 <- BF16, q8_0: our nearest 8-bit path is FP8 w8a8
(quantization="fp8", e4m3fn weights with per-channel scales, per-token activations) <- Q8_0;
q4_0: int4 weight-only group 32 symmetric (QuantConfig(method="int4", group_size=32)) <- Q4_0.
At f32 the logits of both on the prompt are compared (max |diff| / max |logit|, greedy agreement).

    python perf/bench_local.py [--types f32,bf16,q8_0,q4_0] [--repeats 5] [--dir DIR] [--json OUT]
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from pathlib import Path

# Before torch / the extension / llama.cpp start their OpenMP pools.
os.environ.setdefault("OMP_NUM_THREADS", "2")

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import local_model  # noqa: E402

OURS = {  # type -> (dtype, quantization, what it is)
    "f32": ("float32", None, "fp32"),
    "bf16": ("bfloat16", None, "bf16"),
    "q8_0": ("bfloat16", "fp8", "FP8 w8a8 (e4m3fn, per-channel) on bf16"),
    "q4_0": ("bfloat16", "int4-g32", "int4 w4a16 group 32 symmetric on bf16"),
}


def _quant(name):
    if name != "int4-g32":
        return name
    from amd_llama4.config import QuantConfig

    return QuantConfig(method="int4", group_size=32)


class Ours:
    def __init__(self, folder, kind, ctx, threads, enforce_eager=False):
        from amd_llama4 import LLM
        from amd_llama4.engine import cpu_decode

        dtype, q, self.what = OURS[kind]
        torch.set_num_threads(threads)
        self.llm = LLM(str(folder), dtype=dtype, quantization=_quant(q), max_model_len=ctx, max_num_seqs=1,
                       kv_cache_memory_bytes=64 << 20, enable_prefix_caching=False, enforce_eager=enforce_eager)
        eng = self.llm.engine
        self.step = "native step" if eng.runner.native_step is not None else \
            "eager step" + ("" if enforce_eager else f": {cpu_decode.unsupported(eng.model, eng.cache)}")

    def run(self, prompt, n):
        from amd_llama4 import SamplingParams

        t0 = time.perf_counter()
        out = self.llm.generate([prompt], SamplingParams(temperature=0, max_tokens=n, ignore_eos=True))
        return time.perf_counter() - t0, out[0].outputs[0].token_ids

    def logits(self, prompt):
        model = self.llm.engine.model
        with torch.no_grad():  # the model's full causal forward (no cache): fp32 logits [1, S, V]
            return model(torch.tensor([prompt]))[0].float().numpy()  # [S, V]

    def close(self):
        self.llm.shutdown()


class LlamaCpp:
    def __init__(self, gguf, ctx, threads, logits_all=False):
        import llama_cpp

        self.llama = llama_cpp.Llama(str(gguf), n_threads=threads, n_threads_batch=threads, n_ctx=ctx,
                                     logits_all=logits_all, verbose=False)
        self.n_vocab = self.llama.n_vocab()

    def _last_logits(self):
        return np.ctypeslib.as_array(self.llama._ctx.get_logits(), shape=(self.n_vocab,))

    def prefill(self, prompt):
        self.llama.reset()
        t0 = time.perf_counter()
        self.llama.eval(prompt)
        return time.perf_counter() - t0

    def decode(self, n):
        """n greedy tokens after a prefill -> (seconds, tokens)."""
        toks = []
        t0 = time.perf_counter()
        tok = int(np.argmax(self._last_logits()))
        for _ in range(n):
            toks.append(tok)
            self.llama.eval([tok])
            tok = int(np.argmax(self._last_logits()))
        return time.perf_counter() - t0, toks

    def prompt_logits(self, prompt):
        self.llama.reset()
        self.llama.eval(prompt)
        return np.array(self.llama.scores[: len(prompt)], dtype=np.float32)

    def close(self):
        self.llama.close()


def bench_type(kind, paths, args, prompt):
    ctx = args.prompt_len + args.new_tokens + 32
    row = {"type": kind}
    try:
        ours = Ours(paths["hf"], kind, ctx, args.threads, args.enforce_eager)
    except Exception as e:  # noqa: BLE001 - a missing path (int4 kernels) is a table note, not a crash
        ours, row["ours_error"] = None, f"{type(e).__name__}: {e}"
    theirs = LlamaCpp(paths[kind], ctx, args.threads)
    row["ours_path"] = OURS[kind][2] + ("" if ours is None else f", {ours.step}")
    if ours is not None:  # warm-up: first-call allocations, thread pools
        ours.run(prompt, 4)
    theirs.prefill(prompt), theirs.decode(4)
    best = {"ours_prefill": [], "ours_full": [], "cpp_prefill": [], "cpp_decode": []}
    n = args.new_tokens
    for _ in range(args.repeats):  # alternating: a noisy moment hits both sides alike
        if ours is not None:
            tp, _ = ours.run(prompt, 1)
            tf, ours_toks = ours.run(prompt, n + 1)
            best["ours_prefill"].append(tp)
            best["ours_full"].append(tf)
        best["cpp_prefill"].append(theirs.prefill(prompt))
        td, cpp_toks = theirs.decode(n)
        best["cpp_decode"].append(td)
    P = args.prompt_len
    row["cpp_prefill_tok_s"] = P / min(best["cpp_prefill"])
    row["cpp_decode_tok_s"] = n / min(best["cpp_decode"])
    if ours is not None:
        row["ours_prefill_tok_s"] = P / min(best["ours_prefill"])
        # best full run minus best prefill: (full - prefill) of one repeat would credit a slow
        # (noisy) prefill measurement to decode
        row["ours_decode_tok_s"] = n / max(min(best["ours_full"]) - min(best["ours_prefill"]), 1e-9)
        row["decode_ratio"] = row["ours_decode_tok_s"] / row["cpp_decode_tok_s"]
        row["prefill_ratio"] = row["ours_prefill_tok_s"] / row["cpp_prefill_tok_s"]
        same = 0
        for a, b in zip(ours_toks, cpp_toks):
            if a != b:
                break
            same += 1
        row["greedy_prefix_agree"] = f"{same}/{n}"
    theirs.close()
    if kind == "f32" and ours is not None:
        check = LlamaCpp(paths[kind], ctx, args.threads, logits_all=True)
        theirs_l, ours_l = check.prompt_logits(prompt), ours.logits(prompt)
        check.close()
        if ours_l is not None:
            diff = float(np.abs(theirs_l - ours_l).max())
            row["f32_logits_max_abs_diff"] = diff
            row["f32_logits_rel_diff"] = diff / float(np.abs(ours_l).max())
            row["f32_argmax_agree"] = f"{int((theirs_l.argmax(-1) == ours_l.argmax(-1)).sum())}/{len(prompt)}"
    if ours is not None:
        ours.close()
    del ours, theirs
    gc.collect()
    return row


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--types", default="f32,bf16,q8_0,q4_0")
    ap.add_argument("--dir", default=str(local_model.CACHE / "bench_local"), help="model files (built once)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5, help="alternating timed runs per side; the best is reported")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None)
    ap.add_argument("--enforce-eager", action="store_true", help="ours: the op-by-op decode step")
    args = ap.parse_args(argv)
    types = [t for t in args.types.split(",") if t]
    bad = [t for t in types if t not in OURS]
    if bad:
        raise SystemExit(f"--types: unknown {bad}; known: {list(OURS)}")
    paths = local_model.build_all(args.dir, types, args.seed)
    cfg = local_model.scout_shaped_config()
    prompt = torch.randint(10, cfg.vocab_size - 16, (args.prompt_len,),
                           generator=torch.Generator().manual_seed(args.seed)).tolist()
    from amd_llama4.ops import native

    info = native.info().get("native_build") or {}
    print(f"model: {args.dir} (hidden {cfg.hidden_size}, {cfg.num_hidden_layers} layers, {cfg.num_local_experts} "
          f"experts top-{cfg.num_experts_per_tok}); threads {args.threads}; cpu_isa {info.get('cpu_isa')}; "
          f"prompt {args.prompt_len}, decode {args.new_tokens}; best of {args.repeats} alternating repeats")
    rows = []
    for kind in types:
        row = bench_type(kind, paths, args, prompt)
        rows.append(row)
        if "ours_decode_tok_s" in row:
            print(f"{kind:5s} decode  ours {row['ours_decode_tok_s']:7.1f} tok/s | llama.cpp {row['cpp_decode_tok_s']:7.1f} "
                  f"tok/s | {row['decode_ratio']:.2f}x   prefill ours {row['ours_prefill_tok_s']:7.1f} tok/s | "
                  f"llama.cpp {row['cpp_prefill_tok_s']:7.1f} tok/s | {row['prefill_ratio']:.2f}x   "
                  f"greedy agree {row['greedy_prefix_agree']}   (ours: {row['ours_path']})", flush=True)
        else:
            print(f"{kind:5s} decode  ours   n/a ({row['ours_error']}) | llama.cpp {row['cpp_decode_tok_s']:7.1f} tok/s; "
                  f"prefill llama.cpp {row['cpp_prefill_tok_s']:7.1f} tok/s", flush=True)
        if "f32_logits_max_abs_diff" in row:
            print(f"      f32 prompt logits: max |ours - llama.cpp| {row['f32_logits_max_abs_diff']:.3g} "
                  f"({row['f32_logits_rel_diff']:.2e} of max |logit|), argmax agree {row['f32_argmax_agree']}")
    results = {"args": vars(args), "native": info, "rows": rows}
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
