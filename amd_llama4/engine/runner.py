"""ModelRunner: turns one scheduled step into flat (ragged) tensors, runs the model over the paged
cache, returns the logits of each sequence's last new token.

Any mix of items (prefill pieces, decodes) runs as one ragged step: the T new tokens of all
sequences concatenated (no padding to the longest piece), attention reading the paged cache in place
through block tables (engine/step_inputs.py). A decode step (one token per item) on a GPU is replayed
from a HIP/CUDA graph per batch-size bucket unless enforce_eager: the same step with static shapes.
On the CPU, a decode step runs as one native call (engine/cpu_decode.py) unless enforce_eager or the
model needs the eager step (cpu_decode.unsupported says why)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from amd_llama4.engine.block_manager import SeqBlocks
from amd_llama4.engine.cpu_decode import CpuDecodeStep
from amd_llama4.engine.graphs import DecodeGraphs, GraphBackend, TorchCudaGraphs, batch_buckets
from amd_llama4.engine.kv_cache import KVCache
from amd_llama4.engine.step_inputs import PagedStepCache, StepInputs, build_step_inputs


@dataclass
class StepItem:
    """Compute `tokens` of one sequence at positions start .. start+len-1 (blocks already reserved)."""

    blocks: SeqBlocks
    tokens: list[int]
    start: int
    # image features entering this piece: (rows within `tokens`, their rows [k, H]) (engine/mm_inputs.py)
    images: tuple[list[int], torch.Tensor] | None = None


class ModelRunner:
    """max_model_len: the longest sequence a captured step's block tables must hold (default: the
    model's max_position_embeddings, capped by the global pool). max_num_seqs: the largest graph
    bucket. graph_backend: how graphs are captured (tests inject a fake one; default on GPU: torch.cuda)."""

    def __init__(self, model, cache: KVCache, device: torch.device | str, enforce_eager: bool = False, *,
                 max_model_len: int | None = None, max_num_seqs: int = 256, graph_backend: GraphBackend | None = None):
        self.model, self.cache, self.device = model, cache, torch.device(device)
        on_gpu = self.device.type == "cuda"  # ROCm builds of torch name HIP devices "cuda" too
        self.graphs, self.graph_widths, self.native_step = None, None, None
        if not enforce_eager and (on_gpu or graph_backend is not None):
            self.graphs = self._decode_graphs(max_model_len, max_num_seqs, graph_backend or TorchCudaGraphs())
        elif not enforce_eager and self.device.type == "cpu":
            self.native_step = CpuDecodeStep.build(model, cache, max_num_seqs)

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

    def _forward(self, x: StepInputs, embeds: torch.Tensor | None = None) -> torch.Tensor:
        """-> final hidden states [T, H] of every new token. The model sees one flat row [1, T];
        embeds [T, H]: the token embeddings with image features in (None: the model embeds ids)."""
        return self.model.hidden_states(x.ids[None], x.positions[None], PagedStepCache(self.cache, x),
                                        inputs_embeds=None if embeds is None else embeds[None])[0]

    def _embeds(self, items: list[StepItem], x: StepInputs) -> torch.Tensor | None:
        """Early fusion for the pieces holding image tokens: embed_tokens(ids) [T, H] with each
        piece's image features written at its `<|patch|>` rows. x: host inputs (not yet moved)."""
        parts = [(b, it.images) for b, it in enumerate(items) if it.images is not None]
        if not parts:
            return None
        cu = x.cu_seqlens.tolist()
        rows = torch.tensor([cu[b] + r for b, (local, _) in parts for r in local], dtype=torch.long)
        feats = torch.cat([f for _, (_, f) in parts])  # [k, H]
        if feats.shape[0] != rows.shape[0]:
            raise ValueError(f"step: {rows.shape[0]} image token rows but {feats.shape[0]} feature rows")
        emb = self.model.model.embed_tokens(x.ids.to(self.device, non_blocking=True))  # [T, H]
        emb[rows.to(self.device, non_blocking=True)] = feats.to(emb.dtype)
        return emb

    def _inputs(self, items: list[StepItem], **pad) -> StepInputs:
        return build_step_inputs(self.cache, [it.blocks for it in items], [it.tokens for it in items],
                                 [it.start for it in items], **pad)

    @torch.no_grad()
    def hidden_states(self, items: list[StepItem]) -> torch.Tensor:
        """-> [T, H] for every new token of the step, in item order (eager; tools/quant_accuracy)."""
        x = self._inputs(items)
        return self._forward(x.to(self.device), self._embeds(items, x))

    @torch.no_grad()
    def execute(self, items: list[StepItem], rows: list[int] | None = None) -> torch.Tensor:
        """-> fp32 logits [len(rows), V] for the last new token of items[rows] (default: every item).
        Rows not asked for skip the LM head (prefill pieces that sample nothing)."""
        return self.execute_with_prompt(items, rows)[0]

    @torch.no_grad()
    def execute_with_prompt(self, items: list[StepItem], rows: list[int] | None = None,
                            full: list[int] | None = None) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """execute(), plus fp32 logits [len(items[b].tokens), V] of EVERY new token of each item b in
        `full` (prompt logprobs), from one LM head call over the union of the rows."""
        n = len(items)
        bucket = None
        # a graph replays token embeddings only: a step with image features runs eager
        if self.graphs is not None and all(len(it.tokens) == 1 and it.images is None for it in items):
            bucket = self.graphs.bucket_for(n)
        if bucket is not None:  # decode: row b is item b's only token
            hidden = self.graphs.run(self._inputs(items, pad_to=bucket, widths=self.graph_widths))
            last = torch.arange(n) if rows is None else torch.tensor(rows, dtype=torch.long)
            starts = list(range(n))
        else:
            x = self._inputs(items)
            if self.native_step is not None and x.ids.shape[0] == n <= self.native_step.step.max_rows \
                    and all(it.images is None for it in items):  # CPU decode: one native call
                if rows is None and not full and self.native_step.vocab is not None:
                    return self.native_step.run(x, logits=True), []
                hidden = self.native_step.run(x)
            else:
                hidden = self._forward(x.to(self.device), self._embeds(items, x))
            last = x.last if rows is None else x.last[rows]
            starts = x.cu_seqlens.tolist() if full else []  # host inputs: no device sync
        if not full:
            if rows is None and bucket is not None:
                return self.model.compute_logits(hidden[:n]), []
            return self.model.compute_logits(hidden.index_select(0, last.to(self.device, non_blocking=True))), []
        lens = [len(items[b].tokens) for b in full]
        spans = [torch.arange(starts[b], starts[b] + k, dtype=torch.long) for b, k in zip(full, lens)]
        idx = torch.cat([last.to(torch.long), *spans])  # [n_last + sum(lens)]
        logits = self.model.compute_logits(hidden.index_select(0, idx.to(self.device, non_blocking=True)))
        k = last.shape[0]
        return logits[:k], list(logits[k:].split(lens))
