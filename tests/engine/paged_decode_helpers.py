"""Shared by the graph-decode runner and graph tests (imported by module name, like tests/ops/triton_env)."""
import torch

from amd_llama4.engine.block_manager import SeqBlocks
from amd_llama4.engine.kv_cache import KVCache
from amd_llama4.engine.runner import StepItem


class RecordingGraphs:
    """A CPU stand-in for torch.cuda.CUDAGraph: capture runs fn once and keeps it; replay runs the
    same fn again into the same output. fn closes over the static buffers only, so replays see a
    step's data only if the runner copied it into them."""

    def __init__(self):
        self.captured, self.replays = [], 0

    def capture(self, fn):
        out = fn()
        self.captured.append(fn)

        def replay():
            self.replays += 1
            out.copy_(fn())

        return replay, out


def make_cache(model, kv_cache_dtype="auto", kv_scales=None):
    return KVCache(model.config, 40, 3, torch.float32, "cpu", kv_cache_dtype, "e4m3fn", kv_scales)


def drive(model, runners_caches, prompts, steps, drop_after=None):
    """Prefill every prompt, then decode greedily (tokens from the first runner) for `steps` steps;
    drop_after: {step: seq index} leaves the batch before that step.
    -> one list per runner of every decode step's logits [live, V]."""
    n = len(runners_caches)
    seqs = [[SeqBlocks() for _ in prompts] for _ in range(n)]
    toks = [list(p) for p in prompts]
    # prefill chunk by chunk (a step never spans two chunks), one sequence at a time
    chunk = model.config.attention_chunk_size
    for i, p in enumerate(prompts):
        last = []
        for (runner, cache), sq in zip(runners_caches, seqs):
            pos = 0
            while pos < len(p):
                end = min(len(p), (pos // chunk + 1) * chunk)
                cache.reserve(sq[i], pos, end)
                logits = runner.execute([StepItem(sq[i], p[pos:end], pos)])
                pos = end
            last.append(logits)
        toks[i].append(int(last[0][0].argmax()))
    live = list(range(len(prompts)))
    out = [[] for _ in range(n)]
    for step in range(steps):
        if drop_after and step in drop_after:
            live.remove(drop_after[step])
        per = []
        for (runner, cache), sq in zip(runners_caches, seqs):
            items = []
            for i in live:
                pos = len(toks[i]) - 1
                cache.reserve(sq[i], pos, pos + 1)
                items.append(StepItem(sq[i], [toks[i][-1]], pos))
            per.append(runner.execute(items))
        for r in range(n):
            out[r].append(per[r])
        for j, i in enumerate(live):
            toks[i].append(int(per[0][j].argmax()))
    return out


PROMPTS = [[5, 9, 11, 40, 7], [3, 3, 8, 100, 21, 6, 17, 30, 2, 64, 12], [77, 4]]
