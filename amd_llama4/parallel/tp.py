"""Tensor and expert parallelism: who holds which slice of every weight, and the collectives.

Column-parallel (split outputs): q/k/v, gate/up of the dense MLP and the shared expert; row-parallel
(split inputs, partial sums): o_proj and down projections. Routed experts are either sliced like an
MLP along the intermediate dim (tensor parallel) or partitioned whole across ranks (expert parallel);
either way each rank produces a partial sum. One all-reduce closes attention, one closes the FFN
(shared expert + routed experts summed first). Router, norms, embeddings and lm_head are replicated.
KV heads: split when tp divides their count, replicated (each rank keeps the one its query heads
read) when tp is a multiple of it.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

import torch

from amd_llama4.config import Llama4Config


@dataclass(frozen=True)
class Parallel:
    rank: int = 0
    world: int = 1
    expert_parallel: bool = False
    group: object = None  # torch.distributed process group; None = the default group

    @property
    def enabled(self) -> bool:
        return self.world > 1

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        if self.world == 1:
            return x
        import torch.distributed as dist

        dist.all_reduce(x, group=self.group)
        return x


SINGLE = Parallel()


def check_parallel(cfg: Llama4Config, p: Parallel) -> None:
    def bad(why: str) -> ValueError:
        return ValueError(f"tensor_parallel_size={p.world}: {why}")

    if p.world == 1:
        return
    if cfg.num_attention_heads % p.world:
        raise bad(f"does not divide num_attention_heads={cfg.num_attention_heads}")
    kv = cfg.num_key_value_heads
    if kv % p.world and p.world % kv:
        raise bad(f"neither divides nor is a multiple of num_key_value_heads={kv}")
    for name in ("intermediate_size", "intermediate_size_mlp"):
        if getattr(cfg, name) % p.world:
            raise bad(f"does not divide {name}={getattr(cfg, name)}")
    if p.expert_parallel and cfg.num_local_experts % p.world:
        raise bad(f"expert parallel needs it to divide num_local_experts={cfg.num_local_experts}")


@dataclass(frozen=True)
class LocalShapes:
    n_heads: int
    n_kv_heads: int
    kv_head_start: int
    inter: int  # shared expert / expert intermediate on this rank
    inter_mlp: int
    num_experts: int
    expert_start: int
    expert_inter: int


def local_shapes(cfg: Llama4Config, p: Parallel) -> LocalShapes:
    w, r = p.world, p.rank
    kv = cfg.num_key_value_heads
    if kv % w == 0:
        n_kv, kv_start = kv // w, r * (kv // w)
    else:  # more ranks than KV heads: each rank keeps the head its query heads read
        n_kv, kv_start = 1, r // (w // kv)
    E = cfg.num_local_experts
    ep = p.expert_parallel and w > 1
    return LocalShapes(
        n_heads=cfg.num_attention_heads // w, n_kv_heads=n_kv, kv_head_start=kv_start,
        inter=cfg.intermediate_size // w, inter_mlp=cfg.intermediate_size_mlp // w,
        num_experts=E // w if ep else E, expert_start=r * (E // w) if ep else 0,
        expert_inter=cfg.intermediate_size if ep else cfg.intermediate_size // w)


_COL = re.compile(r"\.(self_attn\.q_proj|feed_forward\.(shared_expert\.)?(gate|up)_proj)\.(weight|weight_scale)$")
_ROW = re.compile(r"\.(self_attn\.o_proj|feed_forward\.(shared_expert\.)?down_proj)\.weight$")
_KV = re.compile(r"\.self_attn\.[kv]_proj\.(weight|weight_scale)$")
_EXPERTS = re.compile(r"\.feed_forward\.experts\.(gate_up_proj|down_proj)(_scale)?$")


def shard_fn(name: str, cfg: Llama4Config, p: Parallel) -> Callable | None:
    """How to cut this rank's slice out of a full tensor (or a lazy safetensors slice, which supports
    basic indexing); None = replicated. Names are the model's parameter names."""
    if p.world == 1:
        return None
    s, r, w, D = local_shapes(cfg, p), p.rank, p.world, cfg.head_dim

    def rows(n_total: int):
        n = n_total // w
        return lambda t: t[r * n:(r + 1) * n]

    if _KV.search(name):
        return lambda t: t[s.kv_head_start * D:(s.kv_head_start + s.n_kv_heads) * D]
    if _COL.search(name):
        total = cfg.num_attention_heads * D if ".q_proj." in name else (
            cfg.intermediate_size if ".shared_expert." in name or ".experts." in name else cfg.intermediate_size_mlp)
        return rows(total)
    if _ROW.search(name):
        total = cfg.num_attention_heads * D if ".o_proj." in name else (
            cfg.intermediate_size if ".shared_expert." in name else cfg.intermediate_size_mlp)
        n = total // w
        return lambda t: t[:, r * n:(r + 1) * n]
    m = _EXPERTS.search(name)
    if m:
        kind, is_scale = m.group(1), bool(m.group(2))
        if p.expert_parallel:
            e0, e1 = s.expert_start, s.expert_start + s.num_experts
            return lambda t: t[e0:e1]
        I, n = cfg.intermediate_size, cfg.intermediate_size // w
        if kind == "gate_up_proj":  # [E, H, 2I] (scale [E, 1, 2I]): same slice of the gate and up halves
            return lambda t: torch.cat([t[:, :, r * n:(r + 1) * n], t[:, :, I + r * n:I + (r + 1) * n]], dim=2)
        if not is_scale:  # down [E, I, H]: rows of the intermediate dim; its per-H scale is replicated
            return lambda t: t[:, r * n:(r + 1) * n]
    return None
