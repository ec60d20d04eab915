"""Output tokens/s of `LLM.generate` against transformers' `generate`, same weights, same process.

Default model: a small MoE (hidden 512, 8 layers, 16 experts, top-1, chunk 8192 as released),
fp32 on CPU; batches 1 and 16; 64 new tokens after 32-token prompts; greedy, EOS ignored; the
median of 3 interleaved runs per side.
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

import torch


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--experts", type=int, default=16)
    ap.add_argument("--batches", default="1,16")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3, help="interleaved timed runs per side; medians reported")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    import transformers

    from amd_llama4 import LLM, Llama4Config, SamplingParams

    cfg = Llama4Config(vocab_size=8192, hidden_size=args.hidden, num_hidden_layers=args.layers,
                       num_attention_heads=8, num_key_value_heads=2, head_dim=args.hidden // 8,
                       intermediate_size=args.hidden, intermediate_size_mlp=2 * args.hidden,
                       num_local_experts=args.experts, num_experts_per_tok=1, rope_scaling=None,
                       bos_token_id=1, eos_token_id=2, pad_token_id=0, max_position_embeddings=4096)
    hf_cfg = transformers.Llama4TextConfig(**{k: v for k, v in cfg.to_hf_dict().items()
                                              if k not in ("model_type", "architectures")})
    torch.manual_seed(0)
    hf = transformers.Llama4ForCausalLM(hf_cfg).eval()
    hf.generation_config.eos_token_id = None
    hf.generation_config.pad_token_id = 0
    results = {"model": vars(args), "threads": torch.get_num_threads(), "runs": []}
    with tempfile.TemporaryDirectory() as folder:
        hf.save_pretrained(folder)
        llm = LLM(folder, max_num_seqs=64)
        for b in (int(x) for x in args.batches.split(",")):
            prompts = torch.randint(3, cfg.vocab_size, (b, args.prompt_len), generator=torch.Generator().manual_seed(b))
            sp = SamplingParams(temperature=0, max_tokens=args.new_tokens, ignore_eos=True)
            llm.generate(prompts[:1].tolist(), SamplingParams(temperature=0, max_tokens=4))  # warm-up
            with torch.no_grad():
                hf.generate(prompts[:1], max_new_tokens=4, do_sample=False)  # warm-up
            # Interleaved repeats, median of each: a noisy machine slows both sides alike.
            t_ours_all, t_hf_all = [], []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                ours = llm.generate(prompts.tolist(), sp)
                t_ours_all.append(time.perf_counter() - t0)
                with torch.no_grad():
                    t0 = time.perf_counter()
                    theirs = hf.generate(prompts, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens,
                                         do_sample=False)
                    t_hf_all.append(time.perf_counter() - t0)
            t_ours, t_hf = statistics.median(t_ours_all), statistics.median(t_hf_all)
            n = b * args.new_tokens
            same = sum(o.outputs[0].token_ids == t[args.prompt_len:].tolist() for o, t in zip(ours, theirs))
            run = {"batch": b, "ours_tok_s": n / t_ours, "transformers_tok_s": n / t_hf, "speedup": t_hf / t_ours,
                   "identical_sequences": f"{same}/{b}"}
            results["runs"].append(run)
            print(f"batch {b:3d}: amd_llama4 {run['ours_tok_s']:8.1f} tok/s | transformers "
                  f"{run['transformers_tok_s']:8.1f} tok/s | {run['speedup']:.2f}x | identical {same}/{b}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return results


if __name__ == "__main__":
    main()
