"""perf/ holds scripts, not a package: load them by path."""
import importlib.util
import os
import sys

import pytest

PERF = os.path.join(os.path.dirname(__file__), "..", "..", "perf")


def load_perf_module(name: str):
    path = os.path.abspath(os.path.join(PERF, f"{name}.py"))
    spec = importlib.util.spec_from_file_location(f"perf_{name}", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses need the module registered
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture
def perf_module():
    return load_perf_module

