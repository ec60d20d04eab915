"""The one place that chooses a backend (native | triton | torch) for each op.

Backends register implementations with `register(op, backend)`; the model and engine call the
op functions in `amd_llama4.ops`, which call `resolve()`. Order of preference:
  - per call: `backend="torch" | "native" | "triton"` (an error if that backend lacks the op);
  - env `AMD_LLAMA4_BACKEND` (run time; the build-time target is AMD_LLAMA4_BUILD_TARGET, setup.py):
    preferred for every op that backend has, torch otherwise;
  - default: GPU tensors -> triton, native, torch; CPU tensors -> native, torch
    (Triton on CPU only runs in tests, through the interpreter, when asked for by name).
"""
from __future__ import annotations

import functools
import importlib
import logging
import os
from dataclasses import dataclass
from typing import Any, Callable

import torch

BACKENDS = ("native", "triton", "torch")
_ENV = "AMD_LLAMA4_BACKEND"


@dataclass(frozen=True)
class Impl:
    fn: Callable[..., Any]
    # Optional guard: (*args, **kwargs) -> bool; False means "not for these inputs, try the next backend".
    supports: Callable[..., bool] | None = None


_REGISTRY: dict[str, dict[str, Impl]] = {}
_loaded: set[str] = set()
# backend -> why it cannot run here (None: loaded); shown by `amd-llama4 info`
_UNAVAILABLE: dict[str, str | None] = {}
_log = logging.getLogger("amd_llama4")


def register(op: str, backend: str, supports: Callable[..., bool] | None = None):
    if backend not in BACKENDS:
        raise ValueError(f"register({op!r}): unknown backend {backend!r}; known: {BACKENDS}")

    def deco(fn):
        _REGISTRY.setdefault(op, {})[backend] = Impl(fn, supports)
        _candidates.cache_clear()
        return fn

    return deco


def _load(backend: str) -> None:
    """Import a backend's module once; it registers what it can run on this machine. A GPU backend
    that cannot run logs one warning with the reason; its ops then take the next backend."""
    if backend in _loaded or backend == "torch":
        return
    _loaded.add(backend)
    module = {"native": "amd_llama4.ops.native", "triton": "amd_llama4.ops.triton"}[backend]
    gpu = torch.cuda.is_available()
    try:
        mod = importlib.import_module(module)
    except Exception as e:  # noqa: BLE001 - a broken install (not only a missing one) must not stop the torch path
        reason = f"{type(e).__name__}: {e}"
        # triton simply not installed on a CPU-only machine: expected, nothing to warn about
        loud = gpu or not (isinstance(e, ModuleNotFoundError) and e.name == "triton")
    else:
        reason, loud = _native_reason(mod, gpu) if backend == "native" else (None, False)
    _UNAVAILABLE[backend] = reason
    if reason and loud:
        _log.warning("amd_llama4: the %s backend is unavailable (%s); its ops run on the next backend "
                     "(see `amd-llama4 info`)", backend, reason)


def _native_reason(native, gpu: bool) -> tuple[str | None, bool]:
    """-> (why the native extension cannot run GPU kernels here, whether to warn)."""
    if native.IMPORT_ERROR is not None:
        not_built = "No module named" in native.IMPORT_ERROR  # a pure-Python install: setup.py warned at build
        return native.IMPORT_ERROR, not native.DISABLED and (gpu or not not_built)
    if gpu and native.build_info()["backend"] == "cpu":
        return "amd_llama4._C was built for CPU only (rebuild with AMD_LLAMA4_BUILD_TARGET=rocm|cuda)", True
    return None, False


def backend_status() -> dict[str, str | None]:
    """backend -> None when it loaded, else why not (every backend is loaded to find out)."""
    for b in BACKENDS:
        _load(b)
    return {b: _UNAVAILABLE.get(b) for b in BACKENDS}


def _device_type(args: tuple, kwargs: dict) -> str:
    for a in (*args, *kwargs.values()):
        if isinstance(a, torch.Tensor):
            return a.device.type
    return "cpu"


def preference(device_type: str) -> list[str]:
    return list(_preference(os.environ.get(_ENV, ""), device_type))


@functools.lru_cache(maxsize=64)  # resolve() runs on every op call of every decode step
def _preference(env: str, device_type: str) -> tuple[str, ...]:
    env = env.strip().lower()
    if env:
        if env not in BACKENDS:
            raise ValueError(f"{_ENV}={env!r}: expected one of {BACKENDS}")
        return (env, "torch") if env != "torch" else ("torch",)
    return ("triton", "native", "torch") if device_type != "cpu" else ("native", "torch")


def resolve(op: str, args: tuple, kwargs: dict, backend: str | None = None) -> Callable[..., Any]:
    if op not in _REGISTRY:
        raise KeyError(f"unknown op {op!r}")
    if backend is not None:
        if backend not in BACKENDS:
            raise ValueError(f"{op}: backend={backend!r}, expected one of {BACKENDS}")
        _load(backend)
        impl = _REGISTRY[op].get(backend)
        if impl is None:
            raise RuntimeError(f"{op}: backend {backend!r} is not available here (not built or not installed)")
        return impl.fn
    for impl in _candidates(op, os.environ.get(_ENV, ""), _device_type(args, kwargs)):
        if impl.supports is None or impl.supports(*args, **kwargs):
            return impl.fn
    raise RuntimeError(f"{op}: no backend supports these inputs")


@functools.lru_cache(maxsize=512)  # cleared by register(); resolve() runs on every op call
def _candidates(op: str, env: str, device_type: str) -> tuple[Impl, ...]:
    """The registered implementations of `op`, in preference order."""
    out = []
    for b in _preference(env, device_type):
        _load(b)
        impl = _REGISTRY[op].get(b)
        if impl is not None:
            out.append(impl)
    return tuple(out)


def available(op: str) -> list[str]:
    for b in BACKENDS:
        _load(b)
    return [b for b in BACKENDS if b in _REGISTRY.get(op, {})]


def dispatched(op: str):
    """Decorator for a torch reference: registers it as the 'torch' backend and returns the
    public op, which takes an extra keyword `backend=` and routes through `resolve`."""

    def deco(ref):
        register(op, "torch")(ref)

        def public(*args, backend: str | None = None, **kwargs):
            return resolve(op, args, kwargs, backend)(*args, **kwargs)

        public.__name__ = op
        public.__doc__ = ref.__doc__
        public.reference = ref
        return public

    return deco


_MEMO: dict[tuple, tuple[tuple, Any]] = {}
# One step's tables (a mask per layer kind, one RoPE table) plus one: older ones are dropped at
# once, so a long prefill's [B, S, L] masks are not held past the next step.
_MEMO_SIZE = 4


def same_inputs_memo(fn: Callable[..., Any], *args: Any) -> Any:
    """fn(*args), reused while called again with the very same tensor objects (unchanged: same
    version counter) and equal other arguments: the per-step tables (masks, RoPE angles) that
    every layer of a forward recomputes from the same position tensors. The entry keeps its
    tensors alive, so their ids cannot be reused by other tensors while it is cached."""
    key = (fn, *((id(a), a._version) if isinstance(a, torch.Tensor) else a for a in args))
    hit = _MEMO.get(key)
    if hit is not None:
        return hit[1]
    out = fn(*args)
    if len(_MEMO) >= _MEMO_SIZE:
        _MEMO.pop(next(iter(_MEMO)))  # oldest first
    _MEMO[key] = (args, out)
    return out
