"""Build-time and run-time backend variables are distinct: setup.py reads AMD_LLAMA4_BUILD_TARGET
(cpu | rocm | cuda), still takes the old AMD_LLAMA4_BACKEND spelling for those values with a
deprecation note, and ignores the run-time values (torch | native | triton) of that name."""
import runpy
from pathlib import Path

import pytest
import setuptools

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def choose(monkeypatch):
    monkeypatch.setattr(setuptools, "setup", lambda **kw: None)  # load setup.py's functions only
    ns = runpy.run_path(str(ROOT / "setup.py"), run_name="setup_under_test")
    monkeypatch.setitem(ns["choose_backend"].__globals__, "_rocm_path", lambda: None)  # no ROCm here
    monkeypatch.setitem(ns["choose_backend"].__globals__, "_torch_cuda", lambda: False)
    for var in ("AMD_LLAMA4_BUILD_TARGET", "AMD_LLAMA4_BACKEND"):
        monkeypatch.delenv(var, raising=False)
    return ns["choose_backend"]


def test_build_target(choose, monkeypatch, capsys):
    assert choose() == "cpu"
    monkeypatch.setenv("AMD_LLAMA4_BUILD_TARGET", "ROCm")
    monkeypatch.setenv("AMD_LLAMA4_BACKEND", "cuda")  # the new name wins
    assert choose() == "rocm"
    assert capsys.readouterr().err == ""
    monkeypatch.setenv("AMD_LLAMA4_BUILD_TARGET", "triton")
    with pytest.raises(ValueError, match="AMD_LLAMA4_BUILD_TARGET='triton': expected cpu, rocm or cuda"):
        choose()


def test_old_spelling(choose, monkeypatch, capsys):
    monkeypatch.setenv("AMD_LLAMA4_BACKEND", "cuda")
    assert choose() == "cuda"
    assert "deprecated" in capsys.readouterr().err
    monkeypatch.setenv("AMD_LLAMA4_BACKEND", "triton")  # the run-time meaning: not a build target
    assert choose() == "cpu"
    assert capsys.readouterr().err == ""


def test_cmake_takes_the_new_name():
    text = (ROOT / "CMakeLists.txt").read_text()
    assert "AMD_LLAMA4_BUILD_TARGET" in text and "AMD_LLAMA4_BACKEND" not in text
    assert '-DAMD_LLAMA4_BUILD_TARGET=' in (ROOT / "setup.py").read_text()
