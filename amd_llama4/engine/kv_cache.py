"""Paged KV cache tensors with chunk-bounded memory for Llama 4's chunked-local layers: a
BlockManager (block tables, pools, see block_manager.py) plus the K/V storage of each pool and the
fp8 scales. Tensor side only: how blocks are handed out is block_manager's."""
from __future__ import annotations

import torch

from amd_llama4.config import Llama4Config
from amd_llama4.engine.block_manager import BlockManager, SeqBlocks

class KVCache(BlockManager):
    """Cache tensors per layer kind, [layers_of_kind, num_blocks * block_size, Hkv, D], on top of the
    block bookkeeping (block_manager.BlockManager).

    kv_cache_dtype "fp8" stores float8 plus fp32 scales. A layer whose checkpoint carries
    `self_attn.k_scale` / `v_scale` (per tensor or per KV head) uses those static scales, saturating
    (never NaN/inf); every other layer computes a scale per token and KV head when it writes
    (amax / fp8 max: nothing saturates, whatever the later tokens look like; 4 bytes per 128 fp8
    values)."""

    def __init__(self, cfg: Llama4Config, num_blocks: int | dict[str, int], block_size: int, dtype: torch.dtype,
                 device: torch.device | str, kv_cache_dtype: str = "auto", fp8_format: str = "e4m3fn",
                 kv_scales: dict[int, dict[str, torch.Tensor]] | None = None, kv_heads: tuple[int, int] | None = None,
                 allocate: bool = True):
        """num_blocks: blocks per pool ({"global": n, "chunked": m}, see engine/memory.plan_kv_pools);
        an int gives every pool that many. kv_heads: (first, count) of the KV heads this
        tensor-parallel rank holds (default: all). allocate=False: block bookkeeping only (the
        driver of tensor-parallel workers)."""
        super().__init__(cfg, num_blocks, block_size)
        self.dtype = dtype
        counts = self.layer_counts
        self.fp8 = kv_cache_dtype == "fp8"
        if kv_cache_dtype not in ("auto", "fp8"):
            raise ValueError(f"kv_cache_dtype {kv_cache_dtype!r} not in ('auto', 'fp8')")
        from amd_llama4.ops.fp8 import FP8_MAX
        from amd_llama4.platform import torch_fp8_dtype

        self.store_dtype = torch_fp8_dtype(fp8_format) if self.fp8 else dtype
        self.fp8_max = FP8_MAX[fp8_format] if self.fp8 else None
        h0, nh = kv_heads or (0, cfg.num_key_value_heads)
        self.num_kv_heads = nh
        slots = {k: self.num_blocks[k] * block_size for k in self.kinds}
        shape = lambda k: (counts[k] if allocate else 0, slots[k], nh, cfg.head_dim)  # noqa: E731
        self.k = {k: torch.zeros(shape(k), dtype=self.store_dtype, device=device) for k in self.kinds}
        self.v = {k: torch.zeros(shape(k), dtype=self.store_dtype, device=device) for k in self.kinds}
        # fp8 static scales [layer, K|V, kv head]; 0 = none loaded: that layer scales per token
        self.scales = torch.zeros(cfg.num_hidden_layers, 2, nh, dtype=torch.float32)
        for layer, kv in (kv_scales or {}).items():
            for which, name in ((0, "k"), (1, "v")):
                if name in kv:
                    full = kv[name].float().reshape(-1).expand(cfg.num_key_value_heads) if kv[name].numel() == 1 \
                        else kv[name].float().reshape(-1)
                    self.scales[layer, which] = full[h0:h0 + nh]
        self.scales = self.scales.to(device)
        self.static = [bool((self.scales[i] > 0).all()) for i in range(cfg.num_hidden_layers)]
        # fp8 per-token scales [layers_of_kind, slots, K|V, kv head] for the layers without static ones
        sshape = lambda k: (counts[k] if allocate and self.fp8 else 0, slots[k], 2, nh)  # noqa: E731
        self.token_scales = {k: torch.zeros(sshape(k), dtype=torch.float32, device=device) for k in self.kinds}

    # -- slot maps (runner side) ----------------------------------------------------------------
    def read_maps(self, seqs: list[SeqBlocks], kind: str, ends: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """(slots [B, L], positions [B, L], -1 = empty) of every key a query at ends[b] - 1 of
        seqs[b] may read: `slots` over `visible_range`, on tensors, since a decode step reads the
        whole context of every sequence and a Python loop over positions would cost more than the
        layers' attention."""
        ranges = [self.visible_range(seq, kind, end) for seq, end in zip(seqs, ends)]
        bs, B = self.block_size, len(seqs)
        base = torch.tensor([r.start for r in ranges])  # [B] position of slot 0 of the table
        lens = torch.tensor([len(r) for r in ranges])
        off = torch.arange(int(lens.max()))  # [L] position - base
        width = max(1, max(len(seq.tables[kind]) for seq in seqs))
        tab = torch.zeros(B, width, dtype=torch.long)
        for b, seq in enumerate(seqs):
            tab[b, :len(seq.tables[kind])] = torch.tensor(seq.tables[kind], dtype=torch.long)
        blk = (off // bs).clamp(max=width - 1).expand(B, -1)
        valid = off[None, :] < lens[:, None]
        slots = torch.where(valid, tab.gather(1, blk) * bs + off % bs, 0)
        return slots, torch.where(valid, base[:, None] + off, -1)

    # -- tensor side (called from the model's attention through StepCache) -------------------------
    def write(self, layer: int, k: torch.Tensor, v: torch.Tensor, slots: torch.Tensor) -> None:
        kind, li = self.kind_of_layer[layer], self.index_in_kind[layer]
        if self.fp8:
            if self.static[layer]:
                s = self.scales[layer][:, None, :, None]  # [2, 1, Hkv, 1]
            else:  # [2, N, Hkv, 1]
                s = torch.clamp(torch.stack((k, v)).float().abs().amax(dim=-1, keepdim=True), min=1e-12) / self.fp8_max
                self.token_scales[kind][li].index_copy_(0, slots, s[..., 0].transpose(0, 1))
            k = (k.float() / s[0]).clamp(-self.fp8_max, self.fp8_max)
            v = (v.float() / s[1]).clamp(-self.fp8_max, self.fp8_max)
        for cache, x in ((self.k[kind][li], k), (self.v[kind][li], v)):
            x = x.to(self.store_dtype)
            if self.fp8:  # index_copy_ has no float8 kernels: move the bytes
                cache, x = cache.view(torch.uint8), x.view(torch.uint8)
            cache.index_copy_(0, slots, x)

    def read(self, layer: int, slots: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        kind, li = self.kind_of_layer[layer], self.index_in_kind[layer]
        if not self.fp8:
            return _gather(self.k[kind][li], slots), _gather(self.v[kind][li], slots)
        # gather bytes, then reinterpret (no float8 indexing kernels on CPU), then dequantise
        k = _gather(self.k[kind][li].view(torch.uint8), slots).view(self.store_dtype)
        v = _gather(self.v[kind][li].view(torch.uint8), slots).view(self.store_dtype)
        if self.static[layer]:
            sk, sv = self.scales[layer][:, :, None]  # [Hkv, 1] against [..., Hkv, D]
        else:
            ts = _gather(self.token_scales[kind][li], slots)  # [..., 2, Hkv]
            sk, sv = ts[..., 0, :, None], ts[..., 1, :, None]
        return (k.float() * sk).to(self.dtype), (v.float() * sv).to(self.dtype)


def _gather(cache: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
    """cache[slots] ([*slots.shape, *cache.shape[1:]]) as one index_select: 4x faster than advanced
    indexing on CPU, and a decode step gathers every layer's whole context."""
    return cache.index_select(0, slots.reshape(-1)).view(*slots.shape, *cache.shape[1:])
