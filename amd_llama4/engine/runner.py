"""ModelRunner: turns one scheduled step into padded tensors, runs the model over the paged cache,
returns the logits of each sequence's last new token.

Two paths: a step with any multi-token item (prefill, mixed) gathers each sequence's visible keys
into a dense [B, L, Hkv, D] copy per layer (StepCache); a decode step (one token per item) on a GPU
reads the paged cache in place with static shapes (paged_decode), replayed from a HIP/CUDA graph
per batch-size bucket unless enforce_eager."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from amd_llama4 import ops
from amd_llama4.engine.graphs import DecodeGraphs, GraphBackend, TorchCudaGraphs, batch_buckets
from amd_llama4.engine.block_manager import SeqBlocks
from amd_llama4.engine.kv_cache import KVCache
from amd_llama4.engine.paged_decode import DecodeInputs, PagedDecodeCache, build_decode_inputs, \
    paged_decode_supported


@dataclass
class StepItem:
    """Compute `tokens` of one sequence at positions start .. start+len-1."""

    blocks: SeqBlocks
    tokens: list[int]
    start: int


class StepCache:
    """The model's view of the paged cache for one step (implements model.llama4.KVCache)."""

    def __init__(self, cache: KVCache, write_idx: torch.Tensor, write_slots: dict, read_slots: dict,
                 read_pos: dict):
        self.cache = cache
        # [N] indices of real (non-padding) tokens in the flat [B*S] batch; None: all are (decode)
        self.write_idx = write_idx
        self.write_slots, self.read_slots, self.read_pos = write_slots, read_slots, read_pos

    def update(self, layer, k, v, positions):
        # k, v: [B, S, Hkv, D] -> every visible key of this layer kind: [B, L, Hkv, D], k_pos [B, L]
        kind = self.cache.kind_of_layer[layer]
        B, S = k.shape[:2]
        flat_k, flat_v = k.reshape(B * S, *k.shape[2:]), v.reshape(B * S, *v.shape[2:])
        if self.write_idx is not None:
            flat_k, flat_v = flat_k.index_select(0, self.write_idx), flat_v.index_select(0, self.write_idx)
        self.cache.write(layer, flat_k, flat_v, self.write_slots[kind])
        k_all, v_all = self.cache.read(layer, self.read_slots[kind])
        return k_all, v_all, self.read_pos[kind]

    def attend(self, layer, q, k, v, positions, scale, chunk_size):
        k_all, v_all, k_pos = self.update(layer, k, v, positions)
        return ops.attention(q, k_all, v_all, positions, k_pos, scale, chunk_size)


class ModelRunner:
    """paged_decode: the static decode path (default: on a GPU, when the cache's fp8 scales allow it).
    max_model_len: the longest sequence a captured step's block tables must hold (default: the
    model's max_position_embeddings, capped by the global pool). max_num_seqs: the largest graph
    bucket. graph_backend: how graphs are captured (tests inject a fake one; default on GPU: torch.cuda)."""

    def __init__(self, model, cache: KVCache, device: torch.device | str, enforce_eager: bool = False, *,
                 max_model_len: int | None = None, max_num_seqs: int = 256, paged_decode: bool | None = None,
                 graph_backend: GraphBackend | None = None):
        self.model, self.cache, self.device = model, cache, torch.device(device)
        on_gpu = self.device.type == "cuda"  # ROCm builds of torch name HIP devices "cuda" too
        if paged_decode is None:
            paged_decode = on_gpu
        self.paged_decode = paged_decode and paged_decode_supported(cache)
        self.graphs, self.graph_widths = None, None
        if self.paged_decode and not enforce_eager and (on_gpu or graph_backend is not None):
            self.graphs = self._decode_graphs(max_model_len, max_num_seqs, graph_backend or TorchCudaGraphs())

    def _decode_graphs(self, max_model_len, max_num_seqs, backend) -> DecodeGraphs:
        c, bs = self.cache, self.cache.block_size
        max_len = max_model_len or self.model.config.max_position_embeddings
        widths = {}
        for kind in c.kinds:
            span = c.chunk if kind == "chunked" else max_len
            widths[kind] = min(-(-span // bs), c.allocators[kind].num_blocks)
        buckets = batch_buckets(max_num_seqs)
        buffers = DecodeInputs.empty(c.kinds, buckets[-1], widths, self.device)
        self.graph_widths = widths
        return DecodeGraphs(self._decode_forward, buffers, buckets, backend)

    def _decode_forward(self, inputs: DecodeInputs) -> torch.Tensor:
        # -> [B, 1, H]
        return self.model.hidden_states(inputs.ids, inputs.positions, PagedDecodeCache(self.cache, inputs))

    def _decode_hidden(self, items: list[StepItem]) -> torch.Tensor:
        """-> [n, H] for a decode step of n items."""
        n = len(items)
        args = ([it.blocks for it in items], [it.tokens[0] for it in items], [it.start for it in items])
        bucket = self.graphs.bucket_for(n) if self.graphs is not None else None
        if bucket is not None:
            hidden = self.graphs.run(build_decode_inputs(self.cache, *args, bucket, self.graph_widths))
        else:
            hidden = self._decode_forward(build_decode_inputs(self.cache, *args, n).to(self.device))
        return hidden[:n, 0]

    def _tensors(self, items: list[StepItem]):
        B, S = len(items), max(len(it.tokens) for it in items)
        ids = torch.zeros(B, S, dtype=torch.long)
        pos = torch.full((B, S), -1, dtype=torch.long)
        write_idx = []
        for b, it in enumerate(items):
            n = len(it.tokens)
            ids[b, :n] = torch.tensor(it.tokens)
            pos[b, :n] = torch.arange(it.start, it.start + n)
            write_idx.extend(range(b * S, b * S + n))
        write_slots, read_slots, read_pos = {}, {}, {}
        seqs, ends = [it.blocks for it in items], [it.start + len(it.tokens) for it in items]
        for kind in self.cache.kinds:
            ws = []
            for it in items:
                ws += self.cache.slots(it.blocks, kind, range(it.start, it.start + len(it.tokens)))
            rs, rp = self.cache.read_maps(seqs, kind, ends)
            write_slots[kind] = torch.tensor(ws, dtype=torch.long, device=self.device)
            read_slots[kind], read_pos[kind] = rs.to(self.device), rp.to(self.device)
        write_idx = None if len(write_idx) == B * S else torch.tensor(write_idx, device=self.device)
        step = StepCache(self.cache, write_idx, write_slots, read_slots, read_pos)
        return ids.to(self.device), pos.to(self.device), step

    @torch.no_grad()
    def execute(self, items: list[StepItem]) -> torch.Tensor:
        """-> fp32 logits [B, V] for the last new token of each item."""
        if self.paged_decode and all(len(it.tokens) == 1 for it in items):
            return self.model.compute_logits(self._decode_hidden(items))
        ids, pos, step = self._tensors(items)
        hidden = self.model.hidden_states(ids, pos, step)  # [B, S, H]
        last = torch.tensor([len(it.tokens) - 1 for it in items], device=self.device)
        return self.model.compute_logits(hidden[torch.arange(len(items), device=self.device), last])
