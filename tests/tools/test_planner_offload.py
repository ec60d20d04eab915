"""Planner figures for CPU expert offload (tools/planner_offload.py, `amd-llama4 plan --cpu-offload-experts`)."""
from __future__ import annotations

import json

import pytest
import torch

from amd_llama4 import cli
from amd_llama4.config import preset
from amd_llama4.platform import DEVICE_SPECS
from amd_llama4.tools.planner import WEIGHT_BYTES, param_counts
from amd_llama4.tools.planner_offload import OffloadInput, offload_table, plan_offload


def _plan(**kw):
    return plan_offload(OffloadInput(**kw))


def test_scout_bf16_all_experts_offloaded_fits_one_80gb_gpu():
    off = _plan(model="scout", gpu="h100", weights="bf16", cpu_offload_experts="all")
    none = _plan(model="scout", gpu="h100", weights="bf16", cpu_offload_experts=None)
    assert off["fits_gpu"] and not none["fits_gpu"]
    # 48 layers x 16 experts x 3 x 5120 x 8192 bf16 = 193.3 GB to the host; the GPU keeps ~22 GB of weights
    assert off["host_weight_bytes"] == 48 * 16 * 3 * 5120 * 8192 * 2
    assert 20e9 < off["gpu_weight_bytes"] < 23e9
    assert off["gpu_memory_bytes"] < 0.9 * 80e9 == off["gpu_usable_bytes"]
    print(f"\nScout bf16, all experts offloaded, one H100: GPU {off['gpu_memory_bytes'] / 1e9:.1f} GB of "
          f"{off['gpu_usable_bytes'] / 1e9:.1f} GB usable (without offload {none['gpu_memory_bytes'] / 1e9:.1f} GB), "
          f"host {off['host_memory_bytes'] / 1e9:.1f} GB, decode bound {off['decode_tokens_per_s']:.1f} tok/s")


@pytest.mark.parametrize("kind, spec, n", [("scout", 7, 7), ("scout", "all", 48), ("maverick", 5, 5),
                                           ("maverick", "all", 24), ("maverick", 0, 0)])
@pytest.mark.parametrize("weights", ["bf16", "fp8", "int4"])
def test_offload_moves_exactly_the_expert_bytes(kind, spec, n, weights):
    cfg = preset(kind)
    pc = param_counts(cfg)
    r = _plan(model=kind, weights=weights, cpu_offload_experts=spec)
    base = _plan(model=kind, weights=weights, cpu_offload_experts=None)
    experts = n * cfg.num_local_experts * 3 * cfg.hidden_size * cfg.intermediate_size * WEIGHT_BYTES[weights]
    assert r["offloaded_layers"] == n and r["moe_layers"] == pc.moe_layers
    assert r["host_weight_bytes"] == pytest.approx(experts, rel=1e-12)
    assert base["gpu_memory_bytes"] - r["gpu_memory_bytes"] == pytest.approx(experts, rel=1e-9)
    assert r["gpu_memory_bytes_no_offload"] == base["gpu_memory_bytes"]
    # per token the offloaded layers' top-k experts move from the GPU's reads to the host's
    moved = n * cfg.num_experts_per_tok * pc.expert_params * WEIGHT_BYTES[weights]
    assert r["host_bytes_per_token"] == pytest.approx(moved)
    assert base["gpu_bytes_per_token"] - r["gpu_bytes_per_token"] == pytest.approx(moved, rel=1e-9)


def test_decode_bound_by_hand():
    r = _plan(model="scout", gpu="h100", weights="fp8", cpu_offload_experts=10, host_bandwidth_gb_s=300,
              host_efficiency=0.5, sync_us=20)
    cfg, spec = preset("scout"), DEVICE_SPECS["h100"]
    expert = 3 * cfg.hidden_size * cfg.intermediate_size  # one expert, fp8: 1 B each
    t_host = 10 * expert / (300e9 * 0.5)
    t_gpu = r["gpu_bytes_per_token"] / (spec.hbm_tb_s * 1e12)
    overlap = min(t_host, 10 * expert / (spec.hbm_tb_s * 1e12))  # the shared experts of those layers
    assert r["decode_s_host"] == pytest.approx(t_host) and r["decode_s_gpu"] == pytest.approx(t_gpu)
    assert r["decode_s"] == pytest.approx(t_gpu + t_host - overlap + 10 * 20e-6)
    assert r["decode_tokens_per_s"] == pytest.approx(1 / r["decode_s"])
    # more host bandwidth, faster; all on the GPU (if it fit) is the fastest
    faster = _plan(model="scout", gpu="h100", weights="fp8", cpu_offload_experts=10, host_bandwidth_gb_s=600,
                   host_efficiency=0.5, sync_us=20)
    assert r["decode_tokens_per_s"] < faster["decode_tokens_per_s"] < r["decode_tokens_per_s_gpu_only"]


@pytest.mark.parametrize("kind", ["scout", "maverick"])
def test_int4_below_fp8_below_bf16(kind):
    rows = {w: _plan(model=kind, weights=w, cpu_offload_experts="all") for w in ("int4", "fp8", "bf16")}
    for key in ("host_weight_bytes", "gpu_memory_bytes", "host_bytes_per_token", "gpu_bytes_per_token"):
        assert rows["int4"][key] < rows["fp8"][key] < rows["bf16"][key], key
    tps = [rows[w]["decode_tokens_per_s"] for w in ("int4", "fp8", "bf16")]
    assert tps[0] > tps[1] > tps[2]
    cpu = [rows[w]["cpu_only_decode_tokens_per_s"] for w in ("int4", "fp8", "bf16")]
    assert cpu[0] > cpu[1] > cpu[2]


def test_offload_beats_cpu_only_and_costs_against_gpu_only():
    r = _plan(model="scout", weights="int4", cpu_offload_experts="all")
    assert r["cpu_only_decode_tokens_per_s"] < r["decode_tokens_per_s"] < r["decode_tokens_per_s_gpu_only"]


def test_table_covers_both_models_three_formats_with_and_without():
    rows = offload_table("h100")
    keys = {(r["input"]["model"], r["input"]["weights"], r["input"]["cpu_offload_experts"]) for r in rows}
    assert keys == {(m, w, o) for m in ("scout", "maverick") for w in ("bf16", "fp8", "int4") for o in (None, "all")}
    assert all(r["fits_gpu"] for r in rows if r["input"]["cpu_offload_experts"] == "all")


def test_host_memory_check():
    assert _plan(model="scout", weights="int4", host_memory_gb=64)["fits_host"] is True  # 49.8 GB
    assert _plan(model="scout", weights="bf16", host_memory_gb=128)["fits_host"] is False  # 193 GB
    assert _plan(model="scout")["fits_host"] is None


@pytest.mark.parametrize("field, value, name", [("host_bandwidth_gb_s", 0, "--host-bandwidth"),
                                                ("host_efficiency", 1.5, "--host-efficiency"),
                                                ("host_memory_gb", -1, "--host-memory-gb"),
                                                ("cpu_offload_experts", 49, "--cpu-offload-experts")])
def test_bad_inputs_name_the_flag(field, value, name):
    with pytest.raises(ValueError, match=name):
        _plan(model="scout", **{field: value})


def test_model_and_planner_agree_on_the_host_bytes():
    from amd_llama4.model.loader import load_model
    from amd_llama4.model.offload import offload_bytes

    m = load_model("maverick", device="meta", dtype=torch.bfloat16, progress=False, cpu_offload_experts=6)
    assert offload_bytes(m) == _plan(model="maverick", weights="bf16", cpu_offload_experts=6)["host_weight_bytes"]


def test_cli(capsys):
    assert cli.main(["plan", "--model", "scout", "--gpu", "h100", "--cpu-offload-experts", "all"]) == 0
    out = capsys.readouterr().out
    assert "experts of 48/48 MoE layers on the host" in out and "FITS" in out and "193.3 GB" in out
    assert cli.main(["plan", "--model", "maverick", "--weights", "int4", "--cpu-offload-experts", "4",
                     "--host-bandwidth", "200", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["offloaded_layers"] == 4 and r["input"]["host_bandwidth_gb_s"] == 200
    assert cli.main(["plan", "--offload-table", "--gpu", "mi300x"]) == 0
    assert capsys.readouterr().out.count("\n") == 14
    assert cli.main(["plan", "--cpu-offload-experts", "all", "--num-gpus", "8"]) == 2
    assert "plan one GPU" in capsys.readouterr().out
    assert cli.main(["plan", "--cpu-offload-experts", "all", "--host-bandwidth", "0"]) == 2
    assert "--host-bandwidth" in capsys.readouterr().out
    assert cli.main(["plan", "--cpu-offload-experts", "x"]) == 2
    assert "--cpu-offload-experts 'x'" in capsys.readouterr().out
    assert cli.main(["plan", "--model", "scout", "--gpu", "h100", "--num-gpus", "1"]) == 0  # the plain plan still runs


def test_measured_kernel_read_ratio_is_sane():
    from amd_llama4.tools.planner_offload import STREAM_FRACTION, measure_kernel_read_ratio

    r = measure_kernel_read_ratio(hidden=256, inter=512, experts=2, reps=3)
    assert r["kernel_gb_s"] > 0 and r["read_gb_s"] > 0 and 0 < r["efficiency"] <= STREAM_FRACTION
