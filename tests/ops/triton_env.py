"""Shared set-up for the Triton kernel tests (imported by module name, like tests/serve's helpers)."""
import os

import pytest
import torch

DEV = "cuda" if torch.cuda.is_available() else "cpu"


def require_triton() -> str:
    """Skip the calling module without triton (fail in CI, which installs it); on CPU make sure the
    interpreter is on, which tests/conftest.py arranges before anything imports triton. -> device."""
    if DEV == "cpu":
        os.environ.setdefault("TRITON_INTERPRET", "1")
    if os.environ.get("CI") == "true":
        import triton  # noqa: F401  (a missing triton must fail in CI)
    else:
        pytest.importorskip("triton")
    from amd_llama4.ops.triton.kernels import interpreted

    if DEV == "cpu" and not interpreted():
        msg = "triton was imported before TRITON_INTERPRET=1 was set (set it in the environment or tests/conftest.py)"
        if os.environ.get("CI") == "true":
            raise RuntimeError(msg)
        pytest.skip(msg, allow_module_level=True)
    return DEV
