"""Tile configs as data: the shipped tuned JSON files parse, are marked, cover every device and the
Scout/Maverick shapes; nearest-M lookup; the arch default when no file matches."""

import pytest
from triton_env import require_triton

DEV = require_triton()

import json  # noqa: E402

from amd_llama4.ops.triton import configs  # noqa: E402
from amd_llama4.ops.triton.configs import TileConfig  # noqa: E402
from amd_llama4.platform import DEVICE_SPECS  # noqa: E402

DEVICES = {s.name for s in DEVICE_SPECS.values()}


def test_shipped_files_are_valid_and_marked():
    files = sorted(configs.TUNED_DIR.glob("*.json"))
    assert files
    seen = set()
    for p in files:
        data = json.loads(p.read_text())
        assert data["source"] in ("measured", "untuned-seed"), p.name
        assert p.name == configs.file_name(data["op"], data["device"], data["shape"])
        assert data["configs"] and all(TileConfig.from_dict(c) for c in data["configs"].values())
        seen.add((data["op"], data["device"]))
    assert {d for op, d in seen if op == "fused_moe"} == DEVICES
    assert {d for op, d in seen if op == "fp8_gemm"} == DEVICES


def test_nearest_m_lookup_and_default(tmp_path):
    shape = {"E": 16, "N": 1024, "dtype": "bf16"}
    small, big = TileConfig(16, 64, 128, 1), TileConfig(128, 128, 64, 8, 8)
    configs.write_table("fused_moe", "Test_GPU", shape, {1: small, 512: big}, "measured", tuned_dir=tmp_path)
    assert configs.get_config("fused_moe", "Test_GPU", shape, 7, "gfx942", tmp_path) == (small, "measured")
    assert configs.get_config("fused_moe", "Test_GPU", shape, 300, "gfx942", tmp_path)[0] == big
    assert configs.get_config("fused_moe", "Test_GPU", shape, 10**6, "gfx942", tmp_path)[0] == big
    other = {"E": 128, "N": 1024, "dtype": "bf16"}
    assert configs.get_config("fused_moe", "Test_GPU", other, 7, "gfx942", tmp_path) == (
        configs.default_config("fused_moe", "gfx942"), "default")
    assert configs.default_config("fused_moe", "sm_90") != configs.default_config("fused_moe", "gfx942")


def test_unknown_config_key_is_an_error():
    with pytest.raises(ValueError, match="unknown keys"):
        TileConfig.from_dict({"BLOCK_M": 16, "BLOCK_Q": 3})


def test_seed_writer_matches_shipped_files(tmp_path, monkeypatch):
    import importlib.util
    import pathlib

    spec = importlib.util.spec_from_file_location(
        "tune_moe", pathlib.Path(__file__).resolve().parents[2] / "perf" / "tune_moe.py")
    tune = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tune)
    monkeypatch.setattr(tune, "write_table", lambda *a, **k: configs.write_table(*a, **k, tuned_dir=tmp_path))
    tune.write_seeds()
    for p in tmp_path.glob("*.json"):
        assert json.loads(p.read_text()) == json.loads((configs.TUNED_DIR / p.name).read_text()), p.name
