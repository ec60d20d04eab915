"""HIP/CUDA graphs of the decode step, one per batch-size bucket (as vLLM captures them).

A graph replays the kernels it recorded on the memory it recorded, so each bucket's graph is
captured over views of one set of static input buffers (sized for the largest bucket); a step copies
its inputs into them, replays, and reads the static output. Graphs are captured lazily, at a
bucket's first use, after one eager warm-up run (Triton compiles, lazy tables fill outside the graph),
and share one memory pool. Batches above the largest bucket run eagerly (the runner's choice)."""
from __future__ import annotations

from typing import Callable, Protocol

import torch

from amd_llama4.engine.step_inputs import StepInputs


def batch_buckets(max_num_seqs: int) -> list[int]:
    """1, 2, 4, 8, then every multiple of 8, up to the first bucket >= max_num_seqs."""
    if max_num_seqs < 1:
        raise ValueError(f"max_num_seqs must be >= 1, got {max_num_seqs}")
    out, b = [], 1
    while True:
        out.append(b)
        if b >= max_num_seqs:
            return out
        b = b * 2 if b < 8 else b + 8


class GraphBackend(Protocol):
    def capture(self, fn: Callable[[], torch.Tensor]) -> tuple[Callable[[], None], torch.Tensor]:
        """Record fn() -> (replay, static output that every replay rewrites)."""


class TorchCudaGraphs:
    """torch.cuda.CUDAGraph (HIP graphs on ROCm builds of torch); one memory pool for all graphs."""

    def __init__(self):
        self.pool = torch.cuda.graph_pool_handle()

    def capture(self, fn):
        graph = torch.cuda.CUDAGraph()
        torch.cuda.synchronize()  # the warm-up's work must be done before capture starts
        with torch.cuda.graph(graph, pool=self.pool):
            out = fn()
        return graph.replay, out


class DecodeGraphs:
    """forward(inputs: StepInputs) -> [B, ...] over the static buffers `buffers` (largest bucket rows,
    one token each: a decode step)."""

    def __init__(self, forward: Callable[[StepInputs], torch.Tensor], buffers: StepInputs,
                 buckets: list[int], backend: GraphBackend):
        if buckets[-1] > buffers.batch:
            raise ValueError(f"largest bucket {buckets[-1]} exceeds the {buffers.batch} static buffer rows")
        self.forward, self.buffers, self.buckets, self.backend = forward, buffers, sorted(buckets), backend
        self.graphs: dict[int, tuple[Callable[[], None], torch.Tensor]] = {}

    def bucket_for(self, n: int) -> int | None:
        """The smallest bucket that holds n rows; None: run eagerly."""
        return next((b for b in self.buckets if b >= n), None)

    def run(self, inputs: StepInputs) -> torch.Tensor:
        """inputs: one bucket's rows (any device) -> the static output of that bucket's graph. The
        output is overwritten by the next replay: read it before the next step."""
        b = inputs.batch
        if b not in self.buckets:
            raise ValueError(f"decode graphs: {b} rows is not a bucket {self.buckets}")
        static = self.buffers.rows(b)
        static.copy_(inputs)
        if b not in self.graphs:
            self.forward(static)  # warm-up, eager
            # fresh views for the capture, so nothing memoised on the warm-up's tensor objects
            # (per-step RoPE tables) is reused instead of being recorded
            static = self.buffers.rows(b)
            self.graphs[b] = self.backend.capture(lambda: self.forward(static))
        replay, out = self.graphs[b]
        replay()
        return out
