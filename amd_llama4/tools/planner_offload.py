"""Planner figures for CPU expert offload (`--cpu-offload-experts`, model/offload.py): one GPU plus host
memory, or a CPU-only workstation.

Memory: the GPU holds the one-GPU plan (tools/planner.py: weights + KV + workspace) minus the routed
experts of the offloaded MoE layers; the host holds exactly those experts (pinned).
Decode at batch 1 is memory-bound on both sides (a few GFLOP per token against tens of GB/s..TB/s):
  GPU:  non-expert weights (embedding: one row) + top-k experts of each MoE layer it keeps + the KV
        cache at `context` tokens, at HBM bandwidth;
  host: top-k experts of each offloaded layer, at host bandwidth x efficiency;
  the host's work overlaps only the GPU's shared expert of the same layer (the next layer needs the
  experts' result), and each offloaded layer adds one host round trip (two small PCIe copies + a wait):
  t = t_gpu + t_host - min(t_host, t_shared(offloaded layers)) + layers x sync_us.
CPU-only: every active weight and the KV cache from host memory.
Units: bytes, GB = 1e9 bytes, tokens/s.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass

from amd_llama4.config import load_config
from amd_llama4.platform import DEVICE_SPECS
from amd_llama4.tools.planner import WEIGHT_BYTES, PlanInput, kv_bytes_per_sequence, param_counts, plan

# One EPYC 9004/9005 socket: 12 channels of DDR5-4800 x 8 bytes = 460.8 GB/s theoretical.
DEFAULT_HOST_BANDWIDTH_GB_S = 460.8
# Share of theoretical a well-threaded read reaches on DDR5 servers (STREAM ~ 0.8 of peak, AMD's and
# others' published Genoa figures), times what our native MoE kernel streams at batch 1 relative to a
# plain read on the same threads: 0.57-0.71 fp32, 0.36-0.43 bf16 measured on the shared 2-core dev VM
# with `measure_kernel_read_ratio` (compute-limited and noisy there, so a floor). 0.8 x 0.7 ~ 0.55.
STREAM_FRACTION = 0.8
DEFAULT_HOST_EFFICIENCY = 0.55
# One host round trip per offloaded layer and step: D2H of [T, H] + ids, a host wait, H2D of [T, H].
# An estimate (PCIe latency ~5-10 us per small copy), not measured here (no GPU on the dev machine).
DEFAULT_SYNC_US = 15.0


@dataclass
class OffloadInput:
    model: str = "scout"
    gpu: str = "h100"
    weights: str = "bf16"
    kv: str = "bf16"
    context: int = 8192
    cpu_offload_experts: str | int | None = "all"
    host_bandwidth_gb_s: float = DEFAULT_HOST_BANDWIDTH_GB_S
    host_efficiency: float = DEFAULT_HOST_EFFICIENCY
    host_memory_gb: float | None = None  # None: not checked
    sync_us: float = DEFAULT_SYNC_US
    gpu_memory_utilization: float = 0.90
    max_batched_tokens: int = 8192

    def __post_init__(self) -> None:
        if self.host_bandwidth_gb_s <= 0:
            raise ValueError(f"plan: host_bandwidth_gb_s (--host-bandwidth) must be > 0, "
                             f"got {self.host_bandwidth_gb_s}")
        if not 0 < self.host_efficiency <= 1:
            raise ValueError(f"plan: host_efficiency (--host-efficiency) must be in (0, 1], got {self.host_efficiency}")
        if self.host_memory_gb is not None and self.host_memory_gb <= 0:
            raise ValueError(f"plan: host_memory_gb (--host-memory-gb) must be > 0, got {self.host_memory_gb}")
        if self.sync_us < 0:
            raise ValueError(f"plan: sync_us must be >= 0, got {self.sync_us}")


def plan_offload(p: OffloadInput) -> dict:
    from amd_llama4.model.offload import parse_offload

    cfg = load_config(p.model)
    spec = DEVICE_SPECS[p.gpu]
    base = plan(PlanInput(model=p.model, gpu=p.gpu, num_gpus=1, weights=p.weights, kv=p.kv, context=p.context,
                          gpu_memory_utilization=p.gpu_memory_utilization, max_batched_tokens=p.max_batched_tokens))
    pc = param_counts(cfg)
    wb = WEIGHT_BYTES[p.weights]
    n = len(parse_offload(p.cpu_offload_experts, cfg))
    k = cfg.num_experts_per_tok
    layer_experts = cfg.num_local_experts * pc.expert_params * wb  # routed experts of one MoE layer
    host_weights = n * layer_experts
    gpu_memory = base["memory_bytes_per_gpu"] - host_weights
    kv = kv_bytes_per_sequence(cfg, p.kv, p.context)
    # per token, batch 1
    # everything but the routed experts; of the embedding only this token's row
    non_expert = (pc.linear - pc.experts) * wb + (pc.high_precision - pc.embedding) * 2 + cfg.hidden_size * 2
    gpu_tok = non_expert + (pc.moe_layers - n) * k * pc.expert_params * wb + kv
    host_tok = n * k * pc.expert_params * wb
    hbm = spec.hbm_tb_s * 1e12
    host_bw = p.host_bandwidth_gb_s * 1e9 * p.host_efficiency
    t_gpu, t_host = gpu_tok / hbm, host_tok / host_bw
    t_shared = n * pc.expert_params * wb / hbm  # the shared experts of the offloaded layers (one expert each)
    overlap = min(t_host, t_shared)
    t = t_gpu + t_host - overlap + n * p.sync_us * 1e-6
    t_cpu_only = (non_expert + pc.moe_layers * k * pc.expert_params * wb + kv) / host_bw
    usable = base["usable_bytes_per_gpu"]
    return {
        "input": asdict(p),
        "gpu_spec": asdict(spec),
        "moe_layers": pc.moe_layers,
        "offloaded_layers": n,
        "expert_bytes_per_layer": layer_experts,
        "weights_bytes_total": base["weights_bytes_total"],
        "host_weight_bytes": host_weights,
        "gpu_weight_bytes": base["weights_bytes_per_gpu"] - host_weights,
        "kv_bytes": base["kv_bytes_per_gpu"],
        "workspace_bytes": base["workspace_bytes_per_gpu"],
        "gpu_memory_bytes": gpu_memory,
        "gpu_memory_bytes_no_offload": base["memory_bytes_per_gpu"],
        "gpu_usable_bytes": usable,
        "fits_gpu": gpu_memory <= usable,
        "host_memory_bytes": host_weights,
        "fits_host": None if p.host_memory_gb is None else host_weights <= p.host_memory_gb * 1e9,
        "gpu_bytes_per_token": gpu_tok,
        "host_bytes_per_token": host_tok,
        "pcie_bytes_per_token": n * (2 * cfg.hidden_size * 2 + k * 8),  # x and the result (bf16), weights + ids
        "decode_s_gpu": t_gpu,
        "decode_s_host": t_host,
        "decode_s_overlap": overlap,
        "decode_s": t,
        "decode_tokens_per_s": 1.0 / t,
        "decode_tokens_per_s_gpu_only": 1.0 / (gpu_tok + host_tok) * hbm,  # everything on the GPU (if it fit)
        "cpu_only_host_memory_bytes": base["weights_bytes_total"] + kv,
        "cpu_only_decode_tokens_per_s": 1.0 / t_cpu_only,
        "assumptions": {
            "host_bandwidth": f"{p.host_bandwidth_gb_s} GB/s theoretical x efficiency {p.host_efficiency} "
                              f"(default: 12-channel DDR5-4800 socket; {STREAM_FRACTION} STREAM fraction x our "
                              "kernel's measured share of a plain read)",
            "decode": "batch 1, memory-bound; host work overlaps only the GPU's shared expert of its layer",
            "sync": f"{p.sync_us} us per offloaded layer per step (estimate: two small PCIe copies + one wait)",
            "weights": "as tools/planner.py: fp8/int4 for attention, experts, shared expert and dense MLP; "
                       "embedding, lm_head, router, norms bf16; int4 = 0.5 B + a bf16 scale per 128 weights",
            "kv": f"one sequence of {p.context} tokens, on the GPU (on the host for CPU-only)",
        },
    }


def offload_table(gpu: str = "h100", context: int = 8192, host_bandwidth_gb_s: float = DEFAULT_HOST_BANDWIDTH_GB_S,
                  host_efficiency: float = DEFAULT_HOST_EFFICIENCY, host_memory_gb: float | None = None,
                  models=("scout", "maverick"), weights=("bf16", "fp8", "int4")) -> list[dict]:
    """Scout and Maverick x bf16/fp8/int4 x (no offload, all experts offloaded) on one `gpu`."""
    return [plan_offload(OffloadInput(model=m, gpu=gpu, weights=w, context=context, cpu_offload_experts=o,
                                      host_bandwidth_gb_s=host_bandwidth_gb_s, host_efficiency=host_efficiency,
                                      host_memory_gb=host_memory_gb))
            for m in models for w in weights for o in (None, "all")]


def _gb(v: float) -> str:
    return f"{v / 1e9:,.1f} GB"


def format_offload(r: dict) -> str:
    i = r["input"]
    fits_host = "" if r["fits_host"] is None else (" (fits)" if r["fits_host"] else " (DOES NOT FIT host memory)")
    return "\n".join([
        f"{i['model']} on 1 x {i['gpu']} + host | weights {i['weights']} | KV {i['kv']} | context {i['context']:,} | "
        f"experts of {r['offloaded_layers']}/{r['moe_layers']} MoE layers on the host",
        f"  GPU memory          {_gb(r['gpu_memory_bytes'])} of {_gb(r['gpu_usable_bytes'])} usable "
        f"(without offload {_gb(r['gpu_memory_bytes_no_offload'])}) -> "
        + ("FITS" if r["fits_gpu"] else "DOES NOT FIT"),
        f"  host memory         {_gb(r['host_memory_bytes'])} of expert weights (pinned){fits_host}",
        f"  per token           GPU reads {_gb(r['gpu_bytes_per_token'])}, "
        f"host reads {_gb(r['host_bytes_per_token'])}, PCIe {r['pcie_bytes_per_token'] / 1e3:,.1f} KB",
        f"  decode (bound)      {r['decode_tokens_per_s']:,.1f} tok/s at batch 1 "
        f"(GPU {r['decode_s_gpu'] * 1e3:,.2f} ms + host {r['decode_s_host'] * 1e3:,.2f} ms "
        f"- overlap {r['decode_s_overlap'] * 1e3:,.3f} ms + sync); "
        f"CPU only: {r['cpu_only_decode_tokens_per_s']:,.1f} tok/s",
        f"  host bandwidth      {i['host_bandwidth_gb_s']:,.1f} GB/s x {i['host_efficiency']} efficiency",
    ])


def format_table(rows: list[dict]) -> str:
    head = (f"{'model':9} {'weights':7} {'offload':8} {'GPU mem':>10} {'fits':>5} {'host mem':>10} "
            f"{'decode tok/s':>13} {'CPU-only tok/s':>15}")
    out = [f"one {rows[0]['input']['gpu']} + host at {rows[0]['input']['host_bandwidth_gb_s']:,.1f} GB/s x "
           f"{rows[0]['input']['host_efficiency']}; batch 1, context {rows[0]['input']['context']:,}", head]
    for r in rows:
        i = r["input"]
        out.append(f"{i['model']:9} {i['weights']:7} {str(i['cpu_offload_experts'] or 'none'):8} "
                   f"{_gb(r['gpu_memory_bytes']):>10} {'yes' if r['fits_gpu'] else 'no':>5} "
                   f"{_gb(r['host_memory_bytes']):>10} {r['decode_tokens_per_s']:>13,.1f} "
                   f"{r['cpu_only_decode_tokens_per_s']:>15,.1f}")
    return "\n".join(out)


def measure_kernel_read_ratio(threads: int | None = None, hidden: int = 2048, inter: int = 4096, experts: int = 4,
                              dtype=None, reps: int = 12) -> dict:
    """What the native CPU MoE kernel streams at batch 1 relative to a plain read of the same bytes on the
    same threads (median of `reps`): the kernel part of the host efficiency. ~130 MB of weights (fp32)."""
    import torch

    from amd_llama4 import ops

    dtype = dtype or torch.float32
    if threads:
        torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    wg = (torch.randn(experts, hidden, 2 * inter, generator=g) * 0.02).to(dtype)
    wd = (torch.randn(experts, inter, hidden, generator=g) * 0.02).to(dtype)
    x, w = torch.randn(1, hidden, generator=g).to(dtype), torch.ones(1, 1)
    per = (wg[0].numel() + wd[0].numel()) * wg.element_size()
    flat = torch.cat([wg[0].reshape(-1), wd[0].reshape(-1)])

    def median(fn) -> float:
        ts = []
        for r in range(reps + 2):
            t0 = time.perf_counter()
            fn(r)
            ts.append(time.perf_counter() - t0)
        return sorted(ts[2:])[reps // 2]

    t_kernel = median(lambda r: ops.fused_moe(x, wg, wd, w, torch.tensor([[r % experts]], dtype=torch.int32)))
    t_read = median(lambda r: flat.sum())
    return {"kernel_gb_s": per / t_kernel / 1e9, "read_gb_s": per / t_read / 1e9, "ratio": t_read / t_kernel,
            "efficiency": STREAM_FRACTION * min(1.0, t_read / t_kernel), "threads": torch.get_num_threads(),
            "dtype": str(dtype).removeprefix("torch.")}
