"""CPU expert offload (`--cpu-offload-experts`, EngineArgs.cpu_offload_experts, load_model's argument).

The routed experts of the chosen MoE layers stay in host memory (pinned when a GPU exists) and run on
the host with the native CPU MoE kernels (`ops.fused_moe`, `ops.fused_moe_fp8`, the int4 op: CPU
tensors dispatch to the native backend), while attention, router and shared expert run on the GPU.
Per offloaded layer and step only activations cross PCIe: the routed tokens' hidden states, their
top-k weights and ids to the host, the [T, H] result back.

Placement rule: "all" = every MoE layer; N = the FIRST N MoE layers (counted over MoE layers only, so
N is exactly the number of layers whose experts go to the host, also for Maverick's interleaved
layers). That is llama.cpp's `--n-cpu-moe N` (the first N layers' experts on the CPU); 0 = none.

How: `offload_experts` gives each chosen layer's expert module (Experts, FP8Experts or the int4
experts) a class that puts `OffloadedExperts` in front of its own, as a new module in the layer's
`feed_forward.experts` slot. Parameter names, state-dict keys, the loader's filling and isinstance
checks stay those of the original class; only placement (`_apply`) and `forward` change. It is done
on the meta-device skeleton before the model is materialised (model/loader.py: build_model), so
the offloaded weights are never allocated on the GPU, not even for a moment.
"""
from __future__ import annotations

import re
from typing import Iterable

import torch
import torch.nn as nn

OFFLOAD_FLAG = "--cpu-offload-experts"


def check_offload_spec(spec: str | int | None) -> str | int | None:
    """Syntax only (no config needed, EngineArgs): -> None | 'all' | N >= 0; else an error naming the flag."""
    if spec is None or isinstance(spec, int) and not isinstance(spec, bool) and spec >= 0:
        return spec
    if isinstance(spec, str) and spec.strip().lower() == "all":
        return "all"
    if isinstance(spec, str) and spec.strip().isdigit():
        return int(spec)
    raise ValueError(f"{OFFLOAD_FLAG} {spec!r}: expected 'all' or a number of MoE layers >= 0")


def parse_offload(spec: str | int | None, cfg) -> tuple[int, ...]:
    """spec: None | 'all' | N (int or digit string) -> the indices of the MoE layers (cfg.moe_layers)
    whose experts stay on the host, ascending. An error names the flag and says what is allowed."""
    moe = sorted(cfg.moe_layers)
    if spec is None:
        return ()
    if isinstance(spec, str):
        s = spec.strip().lower()
        if s == "all":
            return tuple(moe)
        if not s.lstrip("-").isdigit():
            raise ValueError(f"{OFFLOAD_FLAG} {spec!r}: expected 'all' or a number of MoE layers (0..{len(moe)})")
        spec = int(s)
    if isinstance(spec, bool) or not isinstance(spec, int):
        raise ValueError(f"{OFFLOAD_FLAG} {spec!r}: expected 'all' or a number of MoE layers (0..{len(moe)})")
    if not 0 <= spec <= len(moe):
        raise ValueError(f"{OFFLOAD_FLAG} {spec}: the model has {len(moe)} MoE layers "
                         f"(of {cfg.num_hidden_layers}); give 0..{len(moe)} or 'all'")
    return tuple(moe[:spec])


def _move_to_host(fn, host: torch.device, pin: bool):
    """Wrap an nn.Module._apply function (to, to_empty, cuda, half, ...) so it changes the dtype as it
    would but leaves the tensor on `host`."""

    def move(t: torch.Tensor) -> torch.Tensor:
        # what fn does to the dtype, learnt on an empty tensor (nothing is allocated, on any device)
        dtype = fn(torch.empty(0, dtype=t.dtype)).dtype
        if t.device.type == "meta" and host.type != "meta":  # to_empty of the skeleton: allocate on the host
            return torch.empty_strided(t.shape, t.stride(), dtype=dtype, device=host, pin_memory=pin)
        out = t.to(host, dtype)
        return out.pin_memory() if pin and not out.is_pinned() else out

    return move


def _on_gpu(t: torch.Tensor) -> bool:
    return t.device.type == "cuda"  # ROCm builds of torch name HIP devices "cuda" too


def _pinned_copy(t: torch.Tensor) -> torch.Tensor:
    h = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
    return h.copy_(t, non_blocking=True)


class OffloadedExperts(nn.Module):
    """Placed in front of an expert module's class by `offload_experts`: its weights stay on `host`
    whatever the model is moved to, and forward runs the wrapped class's forward on host copies of the
    activations, returning the result on the activations' device. Same forward signature as
    llama4.Experts: (x [T, H], topk_weights [T, k] fp32, topk_ids [T, k]) -> [T, H]."""

    offload_host: torch.device
    offload_pin: bool

    def _apply(self, fn, recurse=True):
        return super()._apply(_move_to_host(fn, self.offload_host, self.offload_pin), recurse)

    def extra_repr(self) -> str:
        inner = super().extra_repr()
        return f"{inner + ', ' if inner else ''}host={self.offload_host}, pinned={self.offload_pin}"

    def forward(self, x: torch.Tensor, topk_weights: torch.Tensor, topk_ids: torch.Tensor) -> torch.Tensor:
        if _on_gpu(x):
            return self._forward_gpu(x, topk_weights, topk_ids)
        # No GPU: the same steps as with one (copy in, native host kernel, copy back), so the path is
        # exercised everywhere; the copies are [T, H] against the experts' [T, k, 3 H I] work.
        ins = [t.to(self.offload_host, copy=True) for t in (x, topk_weights, topk_ids)]
        return super().forward(*ins).to(x.device, copy=True)

    def _forward_gpu(self, x, topk_weights, topk_ids):
        # Ordering, one MoE layer (MoE.forward queues router, top-k, then the shared expert, then calls us):
        #   main stream: router, top-k | shared expert | H2D of our result | out + experts (MoE.forward)
        #   side stream: waits for `ready` (recorded by the shared expert's pre-hook, i.e. after top-k and
        #                before the shared expert) -> D2H of x, weights, ids into pinned host buffers
        #   host:        waits for the side stream only (never for the shared expert), runs the native CPU
        #                kernel while the GPU runs the shared expert, then queues the H2D copy on the
        #                main stream, so MoE.forward's add sees the result in stream order.
        # The host sync makes this uncapturable: graphs are off with offload (EngineArgs forces eager).
        if torch.cuda.is_current_stream_capturing():
            raise RuntimeError(f"{OFFLOAD_FLAG}: host-run experts cannot be captured in a HIP/CUDA graph; "
                               "run with --enforce-eager")
        main = torch.cuda.current_stream(x.device)
        hooked, self._offload_ready = getattr(self, "_offload_ready", None), None
        # the pre-hook's event covers our inputs only if they are the shared expert's x and were made
        # before it (MoE.forward without expert parallelism); else order after everything queued
        ready = hooked[0] if hooked is not None and hooked[1] is x else main.record_event()
        side = getattr(self, "_offload_stream", None)
        if side is None or side.device != x.device:
            side = self._offload_stream = torch.cuda.Stream(x.device)
        with torch.cuda.stream(side):
            side.wait_event(ready)
            ins = [_pinned_copy(t) for t in (x, topk_weights, topk_ids)]
        side.synchronize()  # x stays alive in the caller until we return: no record_stream needed
        out = super().forward(*ins)
        # pinned source: a truly asynchronous copy; torch's host allocator keeps the buffer until it is done
        return out.pin_memory().to(x.device, non_blocking=True)


_CLASSES: dict[type, type] = {}


def _offloaded_class(cls: type) -> type:
    if issubclass(cls, OffloadedExperts):
        return cls
    if cls not in _CLASSES:
        _CLASSES[cls] = type(f"{cls.__name__}OnHost", (OffloadedExperts, cls),
                             {"__doc__": f"{cls.__name__} kept in host memory (model/offload.py)."})
    return _CLASSES[cls]


def _mark_ready(experts: OffloadedExperts):
    def hook(_module, args):
        x = args[0] if args else None
        if isinstance(x, torch.Tensor) and _on_gpu(x):
            experts._offload_ready = (torch.cuda.current_stream(x.device).record_event(), x)

    return hook


def moe_blocks(model: nn.Module) -> dict[int, nn.Module]:
    """layer index -> the MoE block (feed_forward with experts and shared_expert) of the text model."""
    out = {}
    for name, mod in model.named_modules():
        m = re.search(r"(?:^|\.)layers\.(\d+)\.feed_forward$", name)
        if m and not name.startswith(("vision_model", "multi_modal_projector")) and hasattr(mod, "experts"):
            out[int(m.group(1))] = mod
    return out


def offload_experts(model: nn.Module, layers: Iterable[int], host: str | torch.device = "cpu",
                    pin: bool | None = None) -> nn.Module:
    """Put the routed experts of MoE `layers` in host memory, in place. Call it on the meta skeleton
    (build_model does) so nothing is allocated on the GPU, or on a loaded model (its expert weights
    move to `host`). pin: page-locked host memory (default: when torch sees a GPU). host="meta":
    shapes only (planning, tests)."""
    host = torch.device(host)
    pin = bool(pin if pin is not None else torch.cuda.is_available()) and host.type == "cpu"
    blocks = moe_blocks(model)
    for i in layers:
        if i not in blocks:
            raise ValueError(f"{OFFLOAD_FLAG}: layer {i} is not a MoE layer (MoE layers: {sorted(blocks)})")
        old = blocks[i].experts
        if isinstance(old, OffloadedExperts):
            continue
        new = _offloaded_class(type(old)).__new__(_offloaded_class(type(old)))
        new.__dict__.update(old.__dict__)
        new._parameters, new._buffers, new._modules = dict(old._parameters), dict(old._buffers), dict(old._modules)
        new.offload_host, new.offload_pin = host, pin
        new._offload_ready = new._offload_stream = None
        new._apply(lambda t: t)  # onto the host now if the model is already materialised
        blocks[i].experts = new
        par = getattr(blocks[i], "par", None)
        # expert parallel: MoE.forward makes the experts' weights/ids after queueing the shared expert,
        # so an event recorded before it would not cover them: no early start there
        if not (par is not None and par.enabled and par.expert_parallel):
            blocks[i].shared_expert.register_forward_pre_hook(_mark_ready(new))
    return model


def offload_skeleton(model: nn.Module, layers: Iterable[int], device: str | torch.device) -> nn.Module:
    """The loader's hook, on a meta skeleton (after any quantised modules are swapped in) that is about
    to be materialised on `device`: the experts of `layers` will materialise in host memory instead,
    pinned when `device` is a GPU; on device="meta" they stay meta (shapes only)."""
    device = torch.device(device)
    return offload_experts(model, layers, "meta" if device.type == "meta" else "cpu", pin=device.type == "cuda")


def offloaded_parameters(model: nn.Module) -> dict[str, torch.Tensor]:
    """name -> tensor of every parameter and buffer that lives in host memory because of offload."""
    out = {}
    for name, mod in model.named_modules():
        if isinstance(mod, OffloadedExperts):
            for n, t in (*mod.named_parameters(recurse=False), *mod.named_buffers(recurse=False)):
                out[f"{name}.{n}"] = t
    return out


def offloaded_layers(model: nn.Module) -> list[int]:
    return sorted(i for i, b in moe_blocks(model).items() if isinstance(b.experts, OffloadedExperts))


def offload_bytes(model: nn.Module) -> int:
    """Bytes the offloaded experts hold in host memory (= GPU bytes saved)."""
    return sum(t.numel() * t.element_size() for t in offloaded_parameters(model).values())
