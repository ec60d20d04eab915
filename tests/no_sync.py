"""`no_host_sync()`: fails on any operation that makes the host wait for the device.

On a GPU, torch.cuda.set_sync_debug_mode("error") catches the syncs the CUDA/HIP runtime sees. On CPU
(CI) a TorchDispatchMode fails on the aten ops that sync on a GPU: reading a value (`.item()`, `int()`,
`bool()` = _local_scalar_dense), ops whose output size depends on the data (nonzero, masked_select,
unique, bincount, boolean indexing, repeat_interleave without output_size), device-to-host copies;
and Tensor.tolist()/.numpy(), which read CPU tensors without any aten op. Triton kernel launches in
the interpreter are device code and are not checked (the interpreter copies to the host by design).
"""
from __future__ import annotations

import contextlib

import torch
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten


class HostSyncError(AssertionError):
    pass


def _packets(*names):
    return {getattr(aten, n) for n in names if hasattr(aten, n)}


# Output size or value read back from the device.
_ALWAYS = _packets("_local_scalar_dense", "nonzero", "argwhere", "masked_select", "masked_scatter", "unique_dim",
                   "_unique", "_unique2", "unique_consecutive", "unique_dim_consecutive", "bincount", "equal",
                   "is_nonzero", "allclose", "nonzero_numpy")


def _is_bool_index(indices) -> bool:
    return any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in indices or ())


def _why(func, args, kwargs) -> str | None:
    packet = func.overloadpacket
    if packet in _ALWAYS:
        return "reads device data on the host (output size or value depends on the data)"
    if packet is aten.repeat_interleave and func is not aten.repeat_interleave.self_int \
            and kwargs.get("output_size") is None:
        return "repeat_interleave by a tensor without output_size (sums the repeats on the host)"
    if packet in (aten.index, aten.index_put, aten.index_put_, aten._index_put_impl_) and _is_bool_index(args[1]):
        return "boolean-mask indexing (a nonzero inside)"
    if packet is aten._to_copy:
        dev = kwargs.get("device")
        if dev is not None and torch.device(dev).type == "cpu" and args[0].device.type != "cpu":
            return "device-to-host copy"
    if packet in (aten.copy_, aten._copy_from, aten._copy_from_and_resize):
        dst, src = (args[0], args[1]) if packet is aten.copy_ else (args[1], args[0])
        if dst.device.type == "cpu" and src.device.type != "cpu":
            return "device-to-host copy"
    return None


class _NoSyncMode(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.paused = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if not self.paused:
            why = _why(func, args, kwargs)
            if why:
                raise HostSyncError(f"host sync on the GPU path: {func} - {why}")
        return func(*args, **kwargs)


def _raiser(name):
    def method(self, *a, **k):
        raise HostSyncError(f"host sync on the GPU path: Tensor.{name}() reads the tensor on the host")
    return method


@contextlib.contextmanager
def _paused_in_triton_interpreter(mode: _NoSyncMode, saved: dict):
    try:
        from triton.runtime.interpreter import GridExecutor
    except ImportError:
        yield
        return
    launch = GridExecutor.__call__

    def paused_launch(self, *args, **kwargs):
        mode.paused += 1
        patched = {n: getattr(torch.Tensor, n) for n in saved}
        for n, m in saved.items():
            setattr(torch.Tensor, n, m)
        try:
            return launch(self, *args, **kwargs)
        finally:
            for n, m in patched.items():
                setattr(torch.Tensor, n, m)
            mode.paused -= 1

    GridExecutor.__call__ = paused_launch
    try:
        yield
    finally:
        GridExecutor.__call__ = launch


@contextlib.contextmanager
def no_host_sync():
    """Raise HostSyncError on the first host sync inside the block."""
    mode = _NoSyncMode()
    names = ("tolist", "numpy", "__array__")
    own = {n: torch.Tensor.__dict__[n] for n in names if n in torch.Tensor.__dict__}  # others: inherited
    saved = {n: getattr(torch.Tensor, n) for n in names}
    cuda = torch.cuda.is_available()
    old_debug = torch.cuda.get_sync_debug_mode() if cuda else None
    try:
        for n in saved:
            setattr(torch.Tensor, n, _raiser(n))
        if cuda:
            torch.cuda.synchronize()  # earlier work must not be blamed on the block
            torch.cuda.set_sync_debug_mode("error")
        with _paused_in_triton_interpreter(mode, saved), mode:
            yield
    finally:
        if cuda:
            torch.cuda.set_sync_debug_mode(old_debug)
        for n in names:
            if n in own:
                setattr(torch.Tensor, n, own[n])
            else:
                delattr(torch.Tensor, n)
