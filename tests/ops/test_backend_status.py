"""A backend that cannot run says so: one warning with the error (never a silent fall back to the torch
reference), the op still runs on the next backend, and `amd-llama4 info` shows each backend's state."""
import logging
import types

import pytest
import torch

from amd_llama4 import ops
from amd_llama4.ops import dispatch


@pytest.fixture
def fresh_dispatch(monkeypatch):
    """dispatch as if no backend module had been imported yet; restored afterwards."""
    monkeypatch.setattr(dispatch, "_loaded", set())
    monkeypatch.setattr(dispatch, "_UNAVAILABLE", {})
    dispatch._candidates.cache_clear()
    yield monkeypatch
    dispatch._candidates.cache_clear()


def _import_with(monkeypatch, modules: dict):
    """dispatch's importlib sees `modules` (name -> module, or an exception to raise)."""
    def import_module(name):
        m = modules[name]
        if isinstance(m, BaseException):
            raise m
        return m
    monkeypatch.setattr(dispatch, "importlib", types.SimpleNamespace(import_module=import_module))


def _native(error=None, disabled=False, backend="cpu"):
    return types.SimpleNamespace(IMPORT_ERROR=error, DISABLED=disabled, build_info=lambda: {"backend": backend})


def test_broken_triton_warns_once_and_falls_back(fresh_dispatch, caplog):
    _import_with(fresh_dispatch, {"amd_llama4.ops.triton": RuntimeError("libamdhip64.so: cannot open shared object"),
                                  "amd_llama4.ops.native": _native()})
    x = torch.randn(3, 8)
    with caplog.at_level(logging.WARNING, logger="amd_llama4"):
        for _ in range(3):
            got = ops.silu_and_mul(x, backend=None)
        status = dispatch.backend_status()
    warnings = [r for r in caplog.records if "triton backend is unavailable" in r.getMessage()]
    assert len(warnings) == 1 and "libamdhip64.so" in warnings[0].getMessage()
    assert status == {"native": None, "triton": "RuntimeError: libamdhip64.so: cannot open shared object",
                      "torch": None}
    torch.testing.assert_close(got, ops.silu_and_mul.reference(x))


def test_triton_not_installed_on_cpu_is_quiet(fresh_dispatch, caplog):
    if torch.cuda.is_available():
        pytest.skip("with a GPU a missing triton is worth a warning")
    _import_with(fresh_dispatch, {"amd_llama4.ops.triton": ModuleNotFoundError("No module named 'triton'",
                                                                              name="triton"),
                                  "amd_llama4.ops.native": _native()})
    with caplog.at_level(logging.WARNING, logger="amd_llama4"):
        status = dispatch.backend_status()
    assert status["triton"] == "ModuleNotFoundError: No module named 'triton'"
    assert not caplog.records


@pytest.mark.parametrize("native,loud", [
    (_native("ImportError: undefined symbol: hipMalloc"), True),  # built, but broken
    (_native("ImportError: disabled by AMD_LLAMA4_NO_NATIVE=1", disabled=True), False),  # asked for
])
def test_native_import_errors(fresh_dispatch, caplog, native, loud):
    _import_with(fresh_dispatch, {"amd_llama4.ops.native": native, "amd_llama4.ops.triton": types.ModuleType("t")})
    with caplog.at_level(logging.WARNING, logger="amd_llama4"):
        assert dispatch.backend_status()["native"] == native.IMPORT_ERROR
    assert bool([r for r in caplog.records if native.IMPORT_ERROR in r.getMessage()]) == loud


def test_cpu_only_build_on_a_gpu_machine_warns(fresh_dispatch, caplog):
    fresh_dispatch.setattr(torch.cuda, "is_available", lambda: True)
    _import_with(fresh_dispatch, {"amd_llama4.ops.native": _native(backend="cpu"),
                                  "amd_llama4.ops.triton": types.ModuleType("t")})
    with caplog.at_level(logging.WARNING, logger="amd_llama4"):
        why = dispatch.backend_status()["native"]
    assert "built for CPU only" in why and "AMD_LLAMA4_BUILD_TARGET" in why
    assert len(caplog.records) == 1


def test_info_shows_backend_states(capsys):
    from amd_llama4.commands import info

    info.run(types.SimpleNamespace(model=None, json=False))
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("backend ")]
    assert [ln.split()[1] for ln in lines] == list(dispatch.BACKENDS)
    status = dispatch.backend_status()
    for ln, b in zip(lines, dispatch.BACKENDS):
        assert ln.split(None, 2)[2] == (status[b] or "ok")
