"""Paged KV cache tensors with chunk-bounded memory for Llama 4's chunked-local layers: a
BlockManager (block tables, pools, see block_manager.py) plus the K/V storage of each pool and the
fp8 scales. Tensor side only: how blocks are handed out is block_manager's."""
from __future__ import annotations

import torch

from amd_llama4.config import Llama4Config
from amd_llama4.engine.block_manager import BlockManager

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

    # -- tensor side (called from the model's attention through step_inputs.PagedStepCache) ------
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

    def paged(self, layer: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """(k_cache, v_cache [num_blocks, block_size, Hkv, D], k_scale, v_scale) of one layer, as
        ops.paged_attention reads them in place: views, no copy. Scales: None (not fp8), the
        checkpoint's static ones [Hkv], or the per-token ones [num_blocks, block_size, Hkv] (strided
        views of token_scales)."""
        kind, li = self.kind_of_layer[layer], self.index_in_kind[layer]
        paged = lambda t: t.view(-1, self.block_size, *t.shape[1:])  # noqa: E731
        k, v = paged(self.k[kind][li]), paged(self.v[kind][li])
        if not self.fp8:
            return k, v, None, None
        if self.static[layer]:
            return k, v, self.scales[layer, 0], self.scales[layer, 1]
        ts = paged(self.token_scales[kind][li])  # [num_blocks, block_size, K|V, Hkv]
        return k, v, ts[:, :, 0], ts[:, :, 1]
