"""ModelRunner: turns one scheduled step into flat (ragged) tensors, runs the model over the paged
cache, returns the logits of each sequence's last new token.

Any mix of items (prefill pieces, decodes) runs as one ragged step: the T new tokens of all
sequences concatenated (no padding to the longest piece), attention reading the paged cache in place
through block tables (engine/step_inputs.py). A decode step (one token per item) on a GPU is replayed
from a HIP/CUDA graph per batch-size bucket unless enforce_eager: the same step with static shapes."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from amd_llama4.engine.block_manager import SeqBlocks
from amd_llama4.engine.graphs import DecodeGraphs, GraphBackend, TorchCudaGraphs, batch_buckets
from amd_llama4.engine.kv_cache import KVCache
from amd_llama4.engine.step_inputs import PagedStepCache, StepInputs, build_step_inputs


@dataclass
class StepItem:
    """Compute `tokens` of one sequence at positions start .. start+len-1 (blocks already reserved)."""

    blocks: SeqBlocks
    tokens: list[int]
    start: int


class ModelRunner:
    """max_model_len: the longest sequence a captured step's block tables must hold (default: the
    model's max_position_embeddings, capped by the global pool). max_num_seqs: the largest graph
    bucket. graph_backend: how graphs are captured (tests inject a fake one; default on GPU: torch.cuda)."""

    def __init__(self, model, cache: KVCache, device: torch.device | str, enforce_eager: bool = False, *,
                 max_model_len: int | None = None, max_num_seqs: int = 256, graph_backend: GraphBackend | None = None):
        self.model, self.cache, self.device = model, cache, torch.device(device)
        on_gpu = self.device.type == "cuda"  # ROCm builds of torch name HIP devices "cuda" too
        self.graphs, self.graph_widths = None, None
        if not enforce_eager and (on_gpu or graph_backend is not None):
            self.graphs = self._decode_graphs(max_model_len, max_num_seqs, graph_backend or TorchCudaGraphs())

    def _decode_graphs(self, max_model_len, max_num_seqs, backend) -> DecodeGraphs:
        c, bs = self.cache, self.cache.block_size
        max_len = max_model_len or self.model.config.max_position_embeddings
        widths = {}
        for kind in c.kinds:
            span = c.chunk if kind == "chunked" else max_len
            widths[kind] = min(-(-span // bs), c.allocators[kind].num_blocks)
        buckets = batch_buckets(max_num_seqs)
        buffers = StepInputs.empty(c.kinds, buckets[-1], widths, self.device)
        self.graph_widths = widths
        return DecodeGraphs(self._forward, buffers, buckets, backend)

    def _forward(self, x: StepInputs) -> torch.Tensor:
        """-> final hidden states [T, H] of every new token. The model sees one flat row [1, T]."""
        return self.model.hidden_states(x.ids[None], x.positions[None], PagedStepCache(self.cache, x))[0]

    def _inputs(self, items: list[StepItem], **pad) -> StepInputs:
        return build_step_inputs(self.cache, [it.blocks for it in items], [it.tokens for it in items],
                                 [it.start for it in items], **pad)

    @torch.no_grad()
    def hidden_states(self, items: list[StepItem]) -> torch.Tensor:
        """-> [T, H] for every new token of the step, in item order (eager; tools/quant_accuracy)."""
        return self._forward(self._inputs(items).to(self.device))

    @torch.no_grad()
    def execute(self, items: list[StepItem], rows: list[int] | None = None) -> torch.Tensor:
        """-> fp32 logits [len(rows), V] for the last new token of items[rows] (default: every item).
        Rows not asked for skip the LM head (prefill pieces that sample nothing)."""
        n = len(items)
        bucket = None
        if self.graphs is not None and all(len(it.tokens) == 1 for it in items):
            bucket = self.graphs.bucket_for(n)
        if bucket is not None:  # decode: row b is item b's only token
            hidden = self.graphs.run(self._inputs(items, pad_to=bucket, widths=self.graph_widths))
            last = torch.arange(n) if rows is None else torch.tensor(rows, dtype=torch.long)
        else:
            x = self._inputs(items)
            hidden = self._forward(x.to(self.device))
            last = x.last if rows is None else x.last[rows]
        if rows is None and bucket is not None:
            return self.model.compute_logits(hidden[:n])
        return self.model.compute_logits(hidden.index_select(0, last.to(self.device, non_blocking=True)))
