"""Host cost of one engine step: `LLM.generate`'s real loop (scheduler, block manager, step inputs,
sampler, detokenizer, outputs) with the model forward replaced by a stand-in that returns
preallocated hidden states and fixed logits, so only the host work around the model is timed.

The model is Scout-shaped in everything the host side sees (perf/local_model.py: 8 layers, global
and chunked KV pools, chunk 8192, vocab 512, the tiny tokenizer) but with tiny weights: they are
never run. Decode is greedy with EOS ignored, no logprobs, no stop strings (the issue-17 case);
each row's logits put their maximum on a different printable token. Prefill steps are excluded;
per decode step it prints the median host ms and the split by phase:

  schedule   Scheduler.schedule (block reservation, prefix-cache registration)
  inputs     ModelRunner._inputs = build_step_inputs (ragged tensors, block tables, slots)
  sampler    Sampler.__call__
  detok      IncrementalDetokenizer.add
  other      the rest of LLMEngine.step (runner glue, _append, outputs) minus the stand-in's own time
  loop       LLM.generate's own work per step (output accumulation), outside LLMEngine.step

--path native (default): decode steps take the runner's CPU native-step branch, the stand-in in
place of cpu_decode.CpuDecodeStep (its own LM head: logits straight from the call), as the product's
CPU decode does; --path eager: every step through model.hidden_states + compute_logits.

    python perf/bench_step_overhead.py [--batches 1,8,32] [--new-tokens 256] [--path eager] [--profile 1]
"""
from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import time
import types
from pathlib import Path

import torch

PHASES = ("schedule", "inputs", "sampler", "detok", "other", "loop")


class _Timer:
    """Per-phase seconds since the current step began (wrappers add to it)."""

    def __init__(self):
        self.cur = dict.fromkeys(("schedule", "inputs", "sampler", "detok", "stand_in"), 0.0)

    def wrap(self, phase: str, fn):
        cur, clock = self.cur, time.perf_counter

        def timed(*a, **kw):
            t0 = clock()
            try:
                return fn(*a, **kw)
            finally:
                cur[phase] += clock() - t0
        return timed


def build_llm(max_num_seqs: int, block_size: int, num_kv_blocks: int):
    """An LLM over a Scout-shaped config with tiny weights (never run: see install_stand_in)."""
    here = str(Path(__file__).resolve().parent)
    if here not in sys.path:
        sys.path.insert(0, here)
    from local_model import scout_shaped_config

    from amd_llama4 import LLM
    from amd_llama4.engine.llm_engine import EngineArgs, LLMEngine
    from amd_llama4.model.llama4 import Llama4ForCausalLM

    cfg = scout_shaped_config(hidden_size=32, head_dim=16, num_attention_heads=2, num_key_value_heads=1,
                              intermediate_size=16, intermediate_size_mlp=32, num_local_experts=2)
    model = Llama4ForCausalLM(cfg).eval()
    # enforce_eager: the CPU's native decode step would run the real model instead of the stand-in
    args = EngineArgs(model="bench-step-overhead", tokenizer="tiny-scout", max_num_seqs=max_num_seqs,
                      block_size=block_size, num_kv_blocks=num_kv_blocks, enforce_eager=True)
    llm = LLM.__new__(LLM)
    llm.engine, llm._ids = LLMEngine(args, model=model), itertools.count()
    return llm


class _NativeStandIn:
    """In place of cpu_decode.CpuDecodeStep: run(inputs) -> preallocated hidden states [R, H], or
    with logits=True (the step's own LM head) the fixed logits [R, V]."""

    def __init__(self, hidden: torch.Tensor, logits: torch.Tensor, timer: _Timer):
        self.step = types.SimpleNamespace(max_rows=hidden.shape[0])
        self.vocab, fixed = logits.shape[1], logits
        self.run = timer.wrap("stand_in", lambda x, logits=False: (fixed if logits else hidden)[:x.ids.shape[0]])


def install_stand_in(llm, timer: _Timer, max_rows: int, path: str) -> list[int]:
    """The model's forward returns a slice of preallocated hidden states; its LM head fixed logits
    whose row r peaks on a printable token (so the detokenizer emits text every step): -> those
    tokens, row by row (request i of a batch decodes in row i every step). path
    "native": decode steps take the runner's CPU native-step branch (the product's CPU decode);
    "eager": every step goes through the model's hidden_states (PagedStepCache, x.to(device))."""
    model = llm.engine.model
    cfg = model.config
    hidden = torch.zeros(1, max_rows, cfg.hidden_size)
    logits = torch.zeros(max_rows, cfg.vocab_size)
    tok = llm.engine.tokenizer
    printable = [t for t in range(cfg.vocab_size) if not tok.is_special(t) and tok.decode([t]).isprintable()
                 and t not in llm.engine.eos_ids]
    expect = [printable[(7 * r + 3) % len(printable)] for r in range(max_rows)]
    logits[torch.arange(max_rows), expect] = 10.0

    def hidden_states(input_ids, positions=None, cache=None, inputs_embeds=None):
        return hidden[:, :input_ids.shape[1]]

    def compute_logits(h):
        return logits[:h.shape[0]]

    model.hidden_states = timer.wrap("stand_in", hidden_states)
    model.compute_logits = timer.wrap("stand_in", compute_logits)
    if path == "native":
        llm.engine.runner.native_step = _NativeStandIn(hidden[0], logits, timer)
    return expect


def instrument(llm, timer: _Timer, record: list) -> None:
    """Wraps the engine's phases (this engine's objects only); `record` gets (is_decode, step
    seconds, phase seconds) per step."""
    eng = llm.engine
    sched = eng.scheduler
    schedule = sched.schedule
    last = {}

    def timed_schedule():
        out = schedule()
        last["decode"] = bool(out.seqs) and all(n == 1 for n in out.num_tokens) and not out.is_prefill
        return out

    sched.schedule = timer.wrap("schedule", timed_schedule)
    eng.runner._inputs = timer.wrap("inputs", eng.runner._inputs)
    eng.sampler = timer.wrap("sampler", eng.sampler)
    sample_state = eng._sample_state

    def timed_sample_state(req, i):  # each request's detokenizer, timed on the instance (no class patch)
        st = sample_state(req, i)
        if st.detok is not None:
            st.detok.add = timer.wrap("detok", st.detok.add)
        return st

    eng._sample_state = timed_sample_state
    step = eng.step

    def timed_step():
        for k in timer.cur:
            timer.cur[k] = 0.0
        t0 = time.perf_counter()
        out = step()
        record.append((last.get("decode", False), time.perf_counter() - t0, dict(timer.cur)))
        return out

    eng.step = timed_step


def run_batch(llm, batch: int, prompt_len: int, new_tokens: int, record: list, expect: list[int]) -> dict:
    from amd_llama4 import SamplingParams

    g = torch.Generator().manual_seed(batch)
    prompts = [torch.randint(5, 500, (prompt_len,), generator=g).tolist() for _ in range(batch)]
    sp = SamplingParams(temperature=0.0, max_tokens=new_tokens, ignore_eos=True)
    record.clear()
    t0 = time.perf_counter()
    outs = llm.generate(prompts, sp)
    wall = time.perf_counter() - t0
    for i, o in enumerate(outs):  # the stand-in ran (not the model), every step, in row order
        if o.outputs[0].token_ids != [expect[i]] * new_tokens:
            raise RuntimeError(f"request {i}: tokens {o.outputs[0].token_ids[:8]}... are not the stand-in's "
                               f"{expect[i]} x {new_tokens}")
    dec = [(t, ph) for d, t, ph in record if d]
    step_total = sum(t for _, t, _ in record)
    n = len(dec)
    loop = (wall - step_total) / max(len(record), 1)  # LLM.generate's own work per step
    host = sorted(t - ph["stand_in"] for t, ph in dec)
    split = {k: statistics.median(ph[k] for _, ph in dec) for k in ("schedule", "inputs", "sampler", "detok")}
    split["other"] = statistics.median(t - sum(ph.values()) for t, ph in dec)
    split["loop"] = loop
    return {"batch": batch, "decode_steps": n, "step_ms": 1e3 * (statistics.median(host) + loop),
            "split_ms": {k: 1e3 * v for k, v in split.items()},
            "stand_in_ms": 1e3 * statistics.median(ph["stand_in"] for _, ph in dec)}


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", default="1,8,32")
    ap.add_argument("--prompt-len", type=int, default=16)
    ap.add_argument("--new-tokens", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3, help="generate() runs per batch; the median run is printed")
    ap.add_argument("--block-size", type=int, default=16)
    ap.add_argument("--profile", type=int, default=0, help="cProfile this batch size once; print the top 25")
    ap.add_argument("--path", choices=("native", "eager"), default="native",
                    help="the runner's decode branch the stand-in takes (see install_stand_in)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    batches = [int(b) for b in args.batches.split(",")]
    per_seq = -(-(args.prompt_len + args.new_tokens) // args.block_size) + 1
    llm = build_llm(max(batches), args.block_size, per_seq * max(batches) + 8)
    timer, record = _Timer(), []
    if args.path == "native" and not hasattr(llm.engine.runner, "native_step"):
        raise SystemExit("--path native: this ModelRunner has no native_step (use --path eager)")
    expect = install_stand_in(llm, timer, max(batches) * max(args.prompt_len, 1), args.path)
    instrument(llm, timer, record)
    run_batch(llm, 1, args.prompt_len, 8, record, expect)  # warm-up (lazy imports, first-use caches)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}; prompt {args.prompt_len}, "
          f"{args.new_tokens} new tokens, greedy, {args.path} decode branch; host ms per decode step "
          "(median step; stand-in excluded)")
    print(f"{'batch':>5} {'step_ms':>8} " + " ".join(f"{p:>8}" for p in PHASES) + f" {'stand_in':>8}")
    results = []
    for b in batches:
        runs = sorted((run_batch(llm, b, args.prompt_len, args.new_tokens, record, expect)
                       for _ in range(args.repeats)), key=lambda r: r["step_ms"])
        r = runs[len(runs) // 2]
        results.append(r)
        print(f"{b:>5} {r['step_ms']:8.3f} " + " ".join(f"{r['split_ms'][p]:8.3f}" for p in PHASES)
              + f" {r['stand_in_ms']:8.3f}")
    if args.profile:
        import cProfile
        import pstats

        prof = cProfile.Profile()
        prof.enable()
        run_batch(llm, args.profile, args.prompt_len, args.new_tokens, record, expect)
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(25)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
