"""Per-step sampler cost with vs without a JSON-schema constraint, at batch 1 / 8 / 32.

One sampler step = Sampler()(logits [B, V]) + SamplingState.append of each sampled id, as the engine
runs it. Constrained rows add: the host bitmask fill (llguidance, one row per sequence), the pinned
host->device copy (GPU), the device unpack + masked_fill, and the matcher advance per sampled id.
Logits are random (temperature 1, unseeded requests), width --vocab (default Llama 4's 202048; the packaged tiny
tokenizer's 512 ids are the grammar's vocabulary, the rest masked); a sequence whose grammar finished
restarts with a fresh matcher, so every timed step is a mid-JSON step. Both sides run in the same
process, interleaved per batch size; medians of --steps steps printed with the ratio.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

SCHEMA = {"type": "object", "properties": {
    "id": {"type": "integer", "minimum": 0, "maximum": 100000},
    "name": {"type": "string", "maxLength": 12},
    "score": {"type": "number", "minimum": 0, "maximum": 1},
    "tags": {"type": "array", "items": {"enum": ["red", "green", "blue"]}, "maxItems": 4},
    "owner": {"type": "object", "properties": {"email": {"type": "string", "maxLength": 20},
                                               "active": {"type": "boolean"}},
              "required": ["email", "active"], "additionalProperties": False}},
    "required": ["id", "name", "tags", "owner"], "additionalProperties": False}


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _step_times(batch: int, vocab: int, steps: int, constrained: bool, dev: torch.device, backend, tok) -> list[float]:
    from amd_llama4.engine.sampler import Sampler, SamplingState
    from amd_llama4.engine.sampling_params import SamplingParams
    from amd_llama4.structured import StructuredOutputsParams

    so = StructuredOutputsParams(json=SCHEMA)
    params = SamplingParams(temperature=1.0, max_tokens=None)  # unseeded: the batch's vectorised draw

    def fresh(i):
        m = backend.matcher(so) if constrained else None
        return SamplingState(params, [1, 2, 3], tok.eos_token_ids, matcher=m)

    states = [fresh(i) for i in range(batch)]
    g = torch.Generator(device=dev).manual_seed(batch)
    sampler = Sampler()
    out = []
    for s in range(steps + 3):  # 3 warm-up steps
        logits = torch.randn(batch, vocab, generator=g, device=dev)
        _sync(dev)
        t0 = time.perf_counter()
        res = sampler(logits, states)  # ends with the step's one device->host copy of the ids
        for st, r in zip(states, res):
            st.append(r.token_id)
        out.append(time.perf_counter() - t0)
        for i, st in enumerate(states):  # outside the timing: a finished JSON restarts
            if st.matcher is not None and st.matcher.terminated:
                states[i] = fresh(i)
    return out[3:]


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--batches", default="1,8,32")
    ap.add_argument("--vocab", type=int, default=202048, help="logits width (Llama 4: 202048)")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    from amd_llama4.engine.tokenizer import Tokenizer
    from amd_llama4.structured.backend import StructuredBackend

    dev = torch.device(args.device)
    tok = Tokenizer.from_pretrained("tiny-scout")
    backend = StructuredBackend(tok, tok.eos_token_ids)
    rows = []
    for b in [int(x) for x in args.batches.split(",")]:
        free = statistics.median(_step_times(b, args.vocab, args.steps, False, dev, backend, tok))
        con = statistics.median(_step_times(b, args.vocab, args.steps, True, dev, backend, tok))
        rows.append({"batch": b, "free_ms": free * 1e3, "constrained_ms": con * 1e3, "ratio": con / free})
        print(f"batch {b:3d}: sampler step {free * 1e3:8.3f} ms free, {con * 1e3:8.3f} ms with a JSON schema "
              f"-> x{con / free:.2f} (+{(con - free) * 1e3:.3f} ms)")
    result = {"config": vars(args), "device": str(dev), "threads": torch.get_num_threads(), "rows": rows}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
