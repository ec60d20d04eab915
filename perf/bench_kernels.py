#!/usr/bin/env python
"""Every op on every available backend at Scout/Maverick shapes: latency, TFLOP/s, GB/s, % of roofline.

    python perf/bench_kernels.py --out results.json                # full sweep (GPU)
    python perf/bench_kernels.py --quick --out cpu.json            # seconds on CPU
    python perf/bench_kernels.py --ops fused_moe,attention --tp 8 --tokens 1,128,4096

Backends: whatever `amd_llama4.ops.available(op)` lists (torch reference, native HIP/CUDA/CPU,
Triton) plus vendor baselines ("vendor:matmul" = hipBLASLt/cuBLAS through torch.matmul,
"vendor:scaled_mm" = torch._scaled_mm, "vendor:sdpa" = torch's fused attention).
Inputs come from a seeded generator; every output is compared with the torch reference on
fp32-upcast inputs (when that fits in memory), so `err_vs_ref` is comparable across platforms.
The JSON is the input of perf/parity.py.
"""
from __future__ import annotations

import argparse
import gc
import importlib
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch
import torch.nn.functional as F

import amd_llama4.ops as ops
from amd_llama4 import platform
from amd_llama4.config import Llama4Config, preset
from amd_llama4.tools import bench

SCHEMA = "amd-llama4/bench_kernels/v1"
ALL_OPS = ("rms_norm", "silu_and_mul", "apply_rope", "attention", "paged_attention_decode", "paged_attention",
           "moe_topk_sigmoid",
           "moe_align_block_size", "fused_moe", "fused_moe_fp8", "quantize_fp8", "gemm_bf16", "fp8_gemm")
VENDOR_ONLY = {"gemm_bf16"}  # ops that exist only as vendor baselines here
# Op modules that register themselves on import and are not (yet) imported by amd_llama4.ops.
OPTIONAL_OP_MODULES = ("fp8_gemm", "moe_fp8", "paged_attention")
for _m in OPTIONAL_OP_MODULES:
    try:
        importlib.import_module(f"amd_llama4.ops.{_m}")
    except ImportError:
        pass
TP_INDEPENDENT = {"rms_norm", "moe_topk_sigmoid", "moe_align_block_size", "quantize_fp8"}
DECODE_CONTEXT = 2048  # keys per sequence in decode attention cases
MAX_DECODE_BATCH = 64


@dataclass
class Case:
    """One op at one shape: inputs, its cost model, and the callables to time."""

    op: str
    shape: dict
    args: tuple
    kwargs: dict
    flops: float
    nbytes: float
    dtype: str = "bf16"
    # backend name -> fn(*args, **kwargs); filled from the registry plus vendor baselines
    impls: dict[str, Callable] = field(default_factory=dict)
    # reference: fn(*args, **kwargs) on the torch backend
    ref: Callable | None = None
    meta: dict = field(default_factory=dict)

    @property
    def key(self) -> str:
        return self.op + "|" + ",".join(f"{k}={v}" for k, v in sorted(self.shape.items()))


# -- helpers -----------------------------------------------------------------------------------------

def _randn(gen, shape, dev, dt, scale=1.0):
    x = torch.randn(shape, generator=gen, device=dev, dtype=dt)
    return x.mul_(scale) if scale != 1.0 else x


def has_op(op: str) -> bool:
    return bool(ops.available(op))


def _backends(op: str, args: tuple, kwargs: dict) -> dict[str, Callable]:
    """backend -> implementation, straight from the dispatch registry. Triton needs a GPU (its CPU
    interpreter is a correctness tool, not something to time), so it is left out on CPU tensors."""
    cpu = _device_of(args) == "cpu"
    out = {}
    for b in ops.available(op):
        if b == "triton" and cpu:
            continue
        out[b] = ops.resolve(op, args, kwargs, backend=b)
    return out


def _device_of(args: tuple) -> str:
    return next((a.device.type for a in args if isinstance(a, torch.Tensor)), "cpu")


_WEIGHTS: dict = {}  # expert weights of one shape (bf16 and fp8): the sweep over token counts reuses them


def _expert_weights(cfg, tp, dev, dt, seed, fp8_fmt: str | None = None):
    """w_gate_up [E, H, 2I], w_down [E, I, H] (bf16), or their fp8 per-channel quantisation."""
    d = _dims(cfg, tp)
    base = (d["E"], d["H"], d["I"], str(dev), dt, seed)
    if _WEIGHTS.get("base") != base:
        _WEIGHTS.clear()
        gen = torch.Generator(device=dev).manual_seed(seed + 1)
        _WEIGHTS.update(base=base, bf16=(_randn(gen, (d["E"], d["H"], 2 * d["I"]), dev, dt, 0.02),
                                         _randn(gen, (d["E"], d["I"], d["H"]), dev, dt, 0.02)))
    if fp8_fmt is None:
        return _WEIGHTS["bf16"]
    if fp8_fmt not in _WEIGHTS:
        _WEIGHTS[fp8_fmt] = tuple(_quantize_per_expert(w, fp8_fmt) for w in _WEIGHTS["bf16"])
    return _WEIGHTS[fp8_fmt]


def _quantize_per_expert(w: torch.Tensor, fmt: str) -> tuple[torch.Tensor, torch.Tensor]:
    """w: [E, K, N] -> (q [E, K, N] fp8, scale [E, 1, N]) one expert at a time: the fp32 temporaries of
    quantising Maverick's 32 GB of expert weights at once would not fit next to them."""
    q = torch.empty(w.shape, dtype=platform.torch_fp8_dtype(fmt), device=w.device)
    scale = torch.empty((w.shape[0], 1, w.shape[2]), dtype=torch.float32, device=w.device)
    for e in range(w.shape[0]):
        q[e], scale[e] = ops.quantize_fp8(w[e], fmt, "col", backend="torch")
    return q, scale


def _fp8_fmt(dev) -> str:
    return platform.fp8_format_for_arch(platform.gpu_arch()) if dev.type != "cpu" else "e4m3fn"


def _es(dt: torch.dtype) -> int:
    return torch.empty((), dtype=dt).element_size()


def _dims(cfg: Llama4Config, tp: int) -> dict:
    if cfg.num_attention_heads % tp or cfg.intermediate_size % tp:
        raise ValueError(f"tp={tp} does not divide the heads/intermediate size")
    return dict(H=cfg.hidden_size, Hq=cfg.num_attention_heads // tp, Hkv=max(1, cfg.num_key_value_heads // tp),
                D=cfg.head_dim, I=cfg.intermediate_size // tp, E=cfg.num_local_experts, k=cfg.num_experts_per_tok)


# -- case builders: one per op; each yields Case objects (inputs built lazily, one case alive at a time) --

def cases_rms_norm(cfg, tp, T, dev, dt, gen):
    d = _dims(cfg, tp)
    x, w = _randn(gen, (T, d["H"]), dev, dt), _randn(gen, (d["H"],), dev, dt)
    es = _es(dt)
    yield Case("rms_norm", dict(T=T, H=d["H"]), (x, w, cfg.rms_norm_eps), {}, 4.0 * T * d["H"],
               (2 * T * d["H"] + d["H"]) * es)


def cases_silu_and_mul(cfg, tp, T, dev, dt, gen):
    d = _dims(cfg, tp)
    x = _randn(gen, (T, 2 * d["I"]), dev, dt)
    yield Case("silu_and_mul", dict(T=T, I=d["I"]), (x,), {}, 5.0 * T * d["I"], 3 * T * d["I"] * _es(dt))


def cases_apply_rope(cfg, tp, T, dev, dt, gen):
    d = _dims(cfg, tp)
    x = _randn(gen, (1, T, d["Hq"], d["D"]), dev, dt)
    pos = torch.arange(T, device=dev)[None]
    inv = ops.rope_inv_freq(d["D"], cfg.rope_theta, cfg.rope_scaling).to(dev)
    n = x.numel()
    yield Case("apply_rope", dict(T=T, Hq=d["Hq"], D=d["D"]), (x, pos, inv), {}, 6.0 * n, 2 * n * _es(dt) + T * 8)


def _sdpa_causal(q, k, v, q_pos, k_pos, scale, chunk_size=None):
    hq, hkv = q.shape[2], k.shape[2]
    return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True,
                                          scale=scale, enable_gqa=hq != hkv).transpose(1, 2)


def cases_attention(cfg, tp, T, dev, dt, gen):
    d = _dims(cfg, tp)
    Hq, Hkv, D = d["Hq"], d["Hkv"], d["D"]
    scale, es = 1.0 / math.sqrt(D), _es(dt)
    chunk = cfg.attention_chunk_size
    # Prefill: one sequence of T tokens, chunked-local mask (= causal while T <= chunk).
    q = _randn(gen, (1, T, Hq, D), dev, dt)
    k, v = _randn(gen, (1, T, Hkv, D), dev, dt), _randn(gen, (1, T, Hkv, D), dev, dt)
    pos = torch.arange(T, device=dev)[None]
    visible = sum(min(i % chunk + 1, i + 1) for i in range(T)) if chunk else T * (T + 1) // 2
    c = Case("attention", dict(mode="prefill", B=1, S=T, L=T, Hq=Hq, Hkv=Hkv, D=D, chunk=chunk),
             (q, k, v, pos, pos, scale), dict(chunk_size=chunk), 4.0 * Hq * D * visible,
             (2 * q.numel() + k.numel() + v.numel()) * es)
    if chunk is None or T <= chunk:
        c.impls["vendor:sdpa"] = _sdpa_causal
    yield c
    del q, k, v, c
    if T > MAX_DECODE_BATCH:
        return
    # Decode: T sequences, one query each, DECODE_CONTEXT cached keys (global NoPE layer: no chunk).
    L = DECODE_CONTEXT
    q = _randn(gen, (T, 1, Hq, D), dev, dt)
    k, v = _randn(gen, (T, L, Hkv, D), dev, dt), _randn(gen, (T, L, Hkv, D), dev, dt)
    q_pos = torch.full((T, 1), L - 1, device=dev)
    k_pos = torch.arange(L, device=dev)[None].expand(T, L).contiguous()
    yield Case("attention", dict(mode="decode", B=T, S=1, L=L, Hq=Hq, Hkv=Hkv, D=D, chunk=None),
               (q, k, v, q_pos, k_pos, scale), dict(chunk_size=None), 4.0 * T * Hq * D * L,
               (2 * q.numel() + k.numel() + v.numel()) * es)


def cases_moe_topk_sigmoid(cfg, tp, T, dev, dt, gen):
    E, k = cfg.num_local_experts, cfg.num_experts_per_tok
    logits = _randn(gen, (T, E), dev, dt)
    yield Case("moe_topk_sigmoid", dict(T=T, E=E, k=k), (logits, k), {}, 2.0 * T * E, T * E * _es(dt) + T * k * 8)


def cases_moe_align_block_size(cfg, tp, T, dev, dt, gen):
    E, k, block = cfg.num_local_experts, cfg.num_experts_per_tok, 64
    ids = torch.randint(0, E, (T, k), generator=gen, device=dev, dtype=torch.int32)
    padded = T * k + E * (block - 1)
    yield Case("moe_align_block_size", dict(T=T, E=E, k=k, block=block), (ids, E, block), {}, 0.0,
               T * k * 4 + padded * 4)


def cases_fused_moe(cfg, tp, T, dev, dt, gen):
    d = _dims(cfg, tp)
    E, k, H, I = d["E"], d["k"], d["H"], d["I"]
    x = _randn(gen, (T, H), dev, dt)
    w1, w2 = _expert_weights(cfg, tp, dev, dt, gen.initial_seed())
    logits = torch.randn((T, E), generator=gen, device=dev, dtype=torch.float32)
    tw, tid = ops.moe_topk_sigmoid(logits, k, backend="torch")
    touched = int(torch.unique(tid).numel())
    es = _es(dt)
    yield Case("fused_moe", dict(T=T, E=E, k=k, H=H, I=I), (x, w1, w2, tw, tid), {}, 6.0 * T * k * H * I,
               touched * 3 * H * I * es + 2 * T * H * es + T * k * 8, meta=dict(experts_touched=touched))


def cases_fused_moe_fp8(cfg, tp, T, dev, dt, gen):
    d = _dims(cfg, tp)
    E, k, H, I = d["E"], d["k"], d["H"], d["I"]
    fmt = _fp8_fmt(dev)
    x = _randn(gen, (T, H), dev, dt)
    (w1q, w1s), (w2q, w2s) = _expert_weights(cfg, tp, dev, dt, gen.initial_seed(), fmt)
    logits = torch.randn((T, E), generator=gen, device=dev, dtype=torch.float32)
    tw, tid = ops.moe_topk_sigmoid(logits, k, backend="torch")
    touched = int(torch.unique(tid).numel())
    yield Case("fused_moe_fp8", dict(T=T, E=E, k=k, H=H, I=I, fmt=fmt), (x, w1q, w1s, w2q, w2s, tw, tid, fmt), {},
               6.0 * T * k * H * I, touched * 3 * H * I + 2 * T * H * _es(dt) + T * k * 8, dtype="fp8",
               meta=dict(experts_touched=touched))


def cases_paged_attention_decode(cfg, tp, T, dev, dt, gen):
    """T sequences (<= MAX_DECODE_BATCH), DECODE_CONTEXT keys each in 16-token blocks scattered over the
    cache; bf16 KV and fp8 KV (per-tensor scales)."""
    if T > MAX_DECODE_BATCH:
        return
    d = _dims(cfg, tp)
    Hq, Hkv, D, L, bs = d["Hq"], d["Hkv"], d["D"], DECODE_CONTEXT, 16
    nblk = T * L // bs
    q = _randn(gen, (T, Hq, D), dev, dt)
    kc, vc = _randn(gen, (nblk, bs, Hkv, D), dev, dt), _randn(gen, (nblk, bs, Hkv, D), dev, dt)
    tables = torch.randperm(nblk, generator=gen, device=dev).to(torch.int32).view(T, L // bs)
    lens = torch.full((T,), L, dtype=torch.int32, device=dev)
    first = torch.zeros(T, dtype=torch.int32, device=dev)
    qpos = torch.full((T,), L - 1, dtype=torch.int32, device=dev)
    scale = 1.0 / math.sqrt(D)
    for kv in ("bf16", "fp8"):
        kw = dict(chunk_size=None)
        k_, v_ = kc, vc
        if kv == "fp8":
            fmt = _fp8_fmt(dev)
            (k_, ks), (v_, vs) = (ops.quantize_fp8(c.reshape(-1, D), fmt, "tensor", backend="torch") for c in (kc, vc))
            k_, v_ = k_.view(kc.shape), v_.view(vc.shape)
            kw.update(k_scale=ks.reshape(1), v_scale=vs.reshape(1))
        kv_bytes = 2 * T * L * Hkv * D * (1 if kv == "fp8" else _es(dt))
        yield Case("paged_attention_decode", dict(B=T, L=L, Hq=Hq, Hkv=Hkv, D=D, block=bs, kv=kv),
                   (q, k_, v_, tables, lens, first, qpos, scale), kw, 4.0 * T * Hq * D * L,
                   kv_bytes + 2 * q.numel() * _es(dt) + tables.numel() * 4)


def cases_paged_attention(cfg, tp, T, dev, dt, gen):
    """A ragged step of T tokens: a prefill piece of T - d tokens of one sequence after 2 * DECODE_CONTEXT
    cached keys, plus d = min(T // 2, MAX_DECODE_BATCH) decodes of DECODE_CONTEXT // 8 keys; 16-token
    blocks scattered over the cache; bf16 KV and fp8 KV (per-token scales, the engine's layout)."""
    d = _dims(cfg, tp)
    Hq, Hkv, D, bs = d["Hq"], d["Hkv"], d["D"], 16
    dec = min(T // 2, MAX_DECODE_BATCH)
    piece, long_ctx, short = T - dec, 2 * DECODE_CONTEXT, DECODE_CONTEXT // 8
    lens = [long_ctx + piece] + [short] * dec
    nq = [piece] + [1] * dec
    need = [-(-n // bs) for n in lens]
    nblk = sum(need)
    q = _randn(gen, (T, Hq, D), dev, dt)
    kc, vc = _randn(gen, (nblk, bs, Hkv, D), dev, dt), _randn(gen, (nblk, bs, Hkv, D), dev, dt)
    perm = torch.randperm(nblk, generator=gen, device=dev).to(torch.int32)
    tables = torch.zeros(len(lens), max(need), dtype=torch.int32, device=dev)
    for b, i in enumerate(torch.tensor([0, *need]).cumsum(0)[:-1].tolist()):
        tables[b, :need[b]] = perm[i:i + need[b]]
    i32 = dict(dtype=torch.int32, device=dev)
    cu = torch.tensor([0, *torch.tensor(nq).cumsum(0).tolist()], **i32)
    lens_t, first = torch.tensor(lens, **i32), torch.zeros(len(lens), **i32)
    qpos = torch.cat([torch.arange(n - k, n, **i32) for n, k in zip(lens, nq)])
    keys = sum(n * k - k * (k - 1) // 2 for n, k in zip(lens, nq))  # visible (query, key) pairs
    for kv in ("bf16", "fp8"):
        kw = dict(chunk_size=None)
        k_, v_ = kc, vc
        if kv == "fp8":
            fmt = _fp8_fmt(dev)
            (k_, ks), (v_, vs) = (ops.quantize_fp8(c.reshape(-1, D), fmt, "row", backend="torch") for c in (kc, vc))
            k_, v_ = k_.view(kc.shape), v_.view(vc.shape)
            kw.update(k_scale=ks.view(nblk, bs, Hkv), v_scale=vs.view(nblk, bs, Hkv))
        kv_bytes = 2 * sum(lens) * Hkv * D * (1 if kv == "fp8" else _es(dt))
        yield Case("paged_attention", dict(T=T, piece=piece, decodes=dec, Hq=Hq, Hkv=Hkv, D=D, block=bs, kv=kv),
                   (q, k_, v_, tables, cu, lens_t, first, qpos, 1.0 / math.sqrt(D)), kw, 4.0 * Hq * D * keys,
                   kv_bytes + 2 * q.numel() * _es(dt) + tables.numel() * 4)


def cases_quantize_fp8(cfg, tp, T, dev, dt, gen):
    H = cfg.hidden_size
    x = _randn(gen, (T, H), dev, dt)
    fmt = _fp8_fmt(dev)
    yield Case("quantize_fp8", dict(T=T, H=H, fmt=fmt, granularity="row"), (x, fmt, "row"), {}, 3.0 * T * H,
               T * H * (_es(dt) + 1) + T * 4, dtype="fp8")


def _gemm_shapes(cfg, tp) -> list[tuple[str, int, int]]:
    d = _dims(cfg, tp)
    return [("qkv_proj", d["H"], (d["Hq"] + 2 * d["Hkv"]) * d["D"]), ("o_proj", d["Hq"] * d["D"], d["H"])]


def cases_gemm_bf16(cfg, tp, T, dev, dt, gen):
    # The vendor BLAS on the attention projections: the roofline anchor every op is compared with.
    for name, K, N in _gemm_shapes(cfg, tp):
        a, b = _randn(gen, (T, K), dev, dt), _randn(gen, (K, N), dev, dt, 0.02)
        c = Case("gemm_bf16", dict(T=T, K=K, N=N, layer=name), (a, b), {}, 2.0 * T * K * N,
                 (T * K + K * N + T * N) * _es(dt))
        c.impls["vendor:matmul"] = torch.matmul
        c.ref = torch.matmul
        yield c


def cases_fp8_gemm(cfg, tp, T, dev, dt, gen):
    fmt = _fp8_fmt(dev)
    for name, K, N in _gemm_shapes(cfg, tp):
        a, b = _randn(gen, (T, K), dev, dt), _randn(gen, (N, K), dev, dt, 0.02)
        aq, sa = ops.quantize_fp8(a, fmt, "row", backend="torch")  # [T, K], [T, 1]
        bq, sb = ops.quantize_fp8(b, fmt, "row", backend="torch")  # [N, K], [N, 1]
        c = Case("fp8_gemm", dict(T=T, K=K, N=N, layer=name, fmt=fmt), (aq, sa, bq, sb), {}, 2.0 * T * K * N,
                 T * K + K * N + T * N * _es(dt) + (T + N) * 4, dtype="fp8")
        # Reference: dequantise and multiply in fp32 (the contract any fp8 GEMM must meet).
        c.ref = lambda aq, sa, bq, sb: (aq.float() * sa) @ (bq.float() * sb).t()
        c.impls = _backends("fp8_gemm", c.args, c.kwargs) if has_op("fp8_gemm") else {}

        def scaled_mm(aq, sa, bq, sb):
            # rowwise scales: a [T,1], b [1,N]; bq.t() is the column-major [K, N] _scaled_mm wants
            return torch._scaled_mm(aq, bq.t(), scale_a=sa, scale_b=sb.t(), out_dtype=torch.bfloat16)

        c.impls["vendor:scaled_mm"] = scaled_mm
        yield c


BUILDERS: dict[str, Callable[..., Iterator[Case]]] = {
    "rms_norm": cases_rms_norm, "silu_and_mul": cases_silu_and_mul, "apply_rope": cases_apply_rope,
    "attention": cases_attention, "paged_attention_decode": cases_paged_attention_decode,
    "paged_attention": cases_paged_attention,
    "fused_moe_fp8": cases_fused_moe_fp8, "moe_topk_sigmoid": cases_moe_topk_sigmoid,
    "moe_align_block_size": cases_moe_align_block_size, "fused_moe": cases_fused_moe,
    "quantize_fp8": cases_quantize_fp8, "gemm_bf16": cases_gemm_bf16, "fp8_gemm": cases_fp8_gemm,
}


# -- accuracy ----------------------------------------------------------------------------------------

def _primary(out) -> torch.Tensor:
    t = out[0] if isinstance(out, (tuple, list)) else out
    return t


def _upcast(args: tuple, kwargs: dict, budget_bytes: float) -> tuple[tuple, dict, str]:
    floats = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor) and a.dtype in
              (torch.bfloat16, torch.float16)]
    if sum(a.numel() * 4 for a in floats) > budget_bytes:
        return args, kwargs, "native"

    def up(a):
        return a.float() if isinstance(a, torch.Tensor) and a.dtype in (torch.bfloat16, torch.float16) else a

    return tuple(up(a) for a in args), {k: up(v) for k, v in kwargs.items()}, "fp32"


def compare(out, ref) -> float:
    """Relative max error of the primary output: max|out - ref| / max|ref| (mismatch fraction for ints)."""
    o, r = _primary(out), _primary(ref)
    if o.shape != r.shape:
        return float("nan")
    if o.dtype.is_floating_point or r.dtype.is_floating_point:
        o, r = o.double(), r.double()
        denom = r.abs().max().item() if r.numel() else 0.0
        return (o - r).abs().max().item() / denom if denom > 0 else (o - r).abs().max().item() if o.numel() else 0.0
    return (o != r).double().mean().item() if o.numel() else 0.0


def checksum(out) -> tuple[float, float]:
    o = _primary(out).double()
    return o.sum().item(), o.abs().sum().item()


# -- driver ------------------------------------------------------------------------------------------

def iter_cases(ops_: list[str], models: list[str], tps: list[int], tokens: list[int], dev, dt, seed: int):
    seen: set[str] = set()
    for op in ops_:
        for model in models:
            cfg = preset(model)
            for tp in ([1] if op in TP_INDEPENDENT else tps):
                for T in tokens:
                    gen = torch.Generator(device=dev).manual_seed(seed)
                    for case in BUILDERS[op](cfg, tp, T, dev, dt, gen):
                        if case.key in seen:  # e.g. rms_norm: Scout and Maverick shapes are equal
                            continue
                        seen.add(case.key)
                        case.meta.update(model=model, tp=tp, tokens=T)
                        yield case


def run_case(case: Case, dev, peaks, args) -> list[dict]:
    impls = case.impls if case.op in ("gemm_bf16", "fp8_gemm") else {**_backends(case.op, case.args, case.kwargs),
                                                                      **case.impls}
    if args.backends:
        impls = {b: f for b, f in impls.items() if b in args.backends}
    ref_fn = case.ref or (ops.resolve(case.op, (), {}, backend="torch") if has_op(case.op) else None)
    budget = 2e9 if dev.type == "cpu" else 16e9
    ref_out, ref_dtype = None, None
    if ref_fn is not None:
        rargs, rkw, ref_dtype = _upcast(case.args, case.kwargs, budget)
        try:
            ref_out = ref_fn(*rargs, **rkw)
        except Exception as e:  # noqa: BLE001 - a failing reference is reported, not fatal
            ref_dtype = f"error: {type(e).__name__}: {e}"[:200]
        del rargs, rkw
    rows = []
    for backend, fn in impls.items():
        row = dict(op=case.op, key=case.key, backend=backend, shape=case.shape, dtype=case.dtype, **case.meta)
        try:
            out = fn(*case.args, **case.kwargs)
            row["err_vs_ref"] = compare(out, ref_out) if ref_out is not None else None
            row["ref_dtype"] = ref_dtype
            row["out_sum"], row["out_abs_sum"] = checksum(out)
            del out
            times = bench.time_fn(lambda: fn(*case.args, **case.kwargs), dev, warmup=args.warmup, iters=args.iters,
                                  max_seconds=args.max_seconds_per_case)
            row.update(bench.summarize_times(times))
            row.update(bench.roofline(case.flops, case.nbytes, row["median_ms"], peaks, case.dtype))
            row["status"] = "ok"
        except Exception as e:  # noqa: BLE001 - one broken backend must not stop the sweep
            row.update(status="error", error=f"{type(e).__name__}: {e}"[:500], flops=case.flops, bytes=case.nbytes)
        rows.append(row)
        if args.verbose:
            _print_row(row)
    return rows


def _print_row(r: dict) -> None:
    if r["status"] != "ok":
        print(f"{r['op']:<22} {r['backend']:<18} {_shape_str(r):<44} ERROR {r.get('error', '')[:80]}", flush=True)
        return
    pct = r.get("pct_of_roofline")
    print(f"{r['op']:<22} {r['backend']:<18} {_shape_str(r):<44} {r['median_ms']:>10.4f} ms "
          f"{r['tflops']:>8.3f} TF/s {r['gbps']:>8.1f} GB/s "
          f"{(f'{pct:5.1f}%' if pct is not None else '   - '):>7} roof  err {r.get('err_vs_ref') or 0:.2e}",
          flush=True)


def _shape_str(r: dict) -> str:
    return f"{r.get('model')} tp{r.get('tp')} " + " ".join(f"{k}={v}" for k, v in r["shape"].items())


def _ints(s: str) -> list[int]:
    return [int(v) for v in s.split(",") if v]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ops", default=",".join(ALL_OPS), help="comma list (default: all)")
    p.add_argument("--models", default="scout,maverick")
    p.add_argument("--tp", default="1,2,4,8", help="tensor-parallel slices")
    p.add_argument("--tokens", default="1,16,128,1024,8192")
    p.add_argument("--backends", default="", help="comma list to restrict to (e.g. torch,triton,vendor:matmul)")
    p.add_argument("--device", default=None, help="cuda | cpu (default: cuda when available)")
    p.add_argument("--dtype", default="bf16", choices=("bf16", "fp16", "fp32"))
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--max-seconds-per-case", type=float, default=2.0)
    p.add_argument("--time-budget", type=float, default=0, help="stop starting new cases after S seconds (0 = none)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="Scout, tp 8, tokens 1 and 4, 2 iterations (CPU smoke run)")
    p.add_argument("--out", default="", help="JSON file (default: print JSON to stdout when not verbose)")
    p.add_argument("-v", "--verbose", action="store_true", help="one line per result while running")
    a = p.parse_args(argv)
    if a.quick:
        a.models, a.tp, a.tokens = "scout", "8", "1,4"
        a.warmup, a.iters, a.max_seconds_per_case = 1, 2, 0.2
    a.backends = [b for b in a.backends.split(",") if b]
    return a


def main(argv=None) -> int:
    args = parse_args(argv)
    dev = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dt = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    ops_ = [o for o in args.ops.split(",") if o]
    unknown = [o for o in ops_ if o not in BUILDERS]
    if unknown:
        print(f"unknown ops {unknown}; known: {list(BUILDERS)}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    peaks = bench.device_peaks(dev)
    results, skipped = [], []
    for op in ops_:
        if op not in VENDOR_ONLY | {"fp8_gemm"} and not has_op(op):
            skipped.append({"op": op, "reason": "not registered in amd_llama4.ops (not implemented yet)"})
    todo = [o for o in ops_ if o not in {s["op"] for s in skipped}]
    doc = {"schema": SCHEMA, "meta": bench.run_metadata(), "device": str(dev),
           "peaks": peaks.as_dict() if peaks else None, "config": dict(vars(args)), "results": results,
           "skipped": skipped, "truncated": False, "complete": False, "elapsed_s": 0.0}
    for case in iter_cases(todo, args.models.split(","), _ints(args.tp), _ints(args.tokens), dev, dt, args.seed):
        if args.time_budget and time.perf_counter() - t0 > args.time_budget:
            doc["truncated"] = True
            break
        results.extend(run_case(case, dev, peaks, args))
        del case
        if dev.type == "cuda":  # Maverick tp=1 expert weights are 32 GB: free each case's inputs
            gc.collect()
            torch.cuda.empty_cache()
        if args.out:  # partial results survive an outer timeout (`complete` stays false)
            doc["elapsed_s"] = time.perf_counter() - t0
            _write(args.out, doc)
    _WEIGHTS.clear()
    doc.update(complete=True, elapsed_s=time.perf_counter() - t0)
    if args.out:
        _write(args.out, doc)
        ok = sum(r["status"] == "ok" for r in results)
        print(f"wrote {args.out}: {ok}/{len(results)} results ok, {len(skipped)} ops skipped"
              f"{' (time budget reached)' if doc['truncated'] else ''}, {doc['elapsed_s']:.1f} s", file=sys.stderr)
    elif not args.verbose:
        print(json.dumps(doc, indent=1, default=str))
    return 0


def _write(path: str, doc: dict) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(doc, f, indent=1, default=str)
    os.replace(tmp, path)  # never a half-written file


if __name__ == "__main__":
    sys.exit(main())
