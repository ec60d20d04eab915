"""Ahead-of-time compilation of every Triton kernel (default + tuned configs) for gfx942, gfx950 and
sm_90 without a GPU, and static checks of the generated code: matrix instructions, no spills or
scratch for the defaults, LDS limits, gfx942 occupancy. Also the `amd-llama4 isa` command."""
import json
import os
import subprocess
import sys

import pytest

if os.environ.get("CI") == "true":
    import triton  # noqa: F401  (CI installs triton: a missing one must fail)
else:
    pytest.importorskip("triton")

from amd_llama4.tools import isa  # noqa: E402

FIELDS = ("kernel", "config", "vgpr", "agpr", "sgpr", "vgpr_spill", "sgpr_spill", "scratch_bytes", "lds_bytes",
          "occupancy", "mfma")


@pytest.fixture(scope="module")
def records():
    cache = {}

    def get(arch):
        if arch not in cache:
            cache[arch] = isa.triton_records(arch)
        return cache[arch]

    return get


EXPECTED = {"moe_gemm[gate_up,bf16]", "moe_gemm[down,bf16]", "moe_gemm[gate_up,fp8]", "moe_gemm[down,fp8]",
            "quant_fp8_rows", "top1_sigmoid", "fp8_gemm[channel]", "fp8_gemm[block128]", "attn_prefill[chunked]",
            "attn_prefill[global,temp]", "paged_decode[bf16_kv]", "paged_decode[fp8_kv]", "paged_reduce",
            "paged_prefill[bf16_kv,chunked]", "paged_prefill[bf16_kv]", "paged_prefill[fp8_kv,chunked]",
            "moe_align[E128]"}


@pytest.mark.parametrize("arch", isa.ARCHS)
def test_every_kernel_compiles_with_default_and_tuned(records, arch):
    recs = records(arch)
    names = {r.kernel for r in recs}
    assert EXPECTED <= names, f"missing: {EXPECTED - names}"
    assert all(r.arch == arch for r in recs)
    tuned = [r for r in recs if r.source.startswith("tuned:")]
    assert tuned, "no tuned config was compiled: amd_llama4/tuned/*.json missing for this arch's devices"
    assert {r.kernel for r in tuned} >= {"moe_gemm[gate_up,bf16]", "moe_gemm[gate_up,fp8]", "fp8_gemm[channel]"}


@pytest.mark.parametrize("arch", isa.ARCHS)
def test_dot_kernels_use_matrix_instructions(records, arch):
    for r in records(arch):
        if not r.dot:
            continue
        if arch.startswith("gfx"):
            assert r.mfma > 0, f"{r.kernel} {r.config}: no v_mfma on {arch}"
        else:
            assert r.mfma + r.mma_sync > 0, f"{r.kernel} {r.config}: no tensor-core instruction on sm_90"
            # Hopper's wgmma needs 64-row tiles: every default with BLOCK_M >= 64 must use it
            if r.source == "default" and r.config.startswith(("M64", "M128")):
                assert r.mfma > 0, f"{r.kernel} {r.config}: no wgmma on sm_90"


@pytest.mark.parametrize("arch", isa.ARCHS)
def test_defaults_have_no_spills_or_scratch(records, arch):
    for r in records(arch):
        if r.source in ("default", "fixed"):
            assert (r.vgpr_spill, r.sgpr_spill, r.scratch_bytes) == (0, 0, 0), f"{r.kernel} {r.config} on {arch}: {r}"


@pytest.mark.parametrize("arch", isa.ARCHS)
def test_lds_within_limit(records, arch):
    for r in records(arch):
        assert 0 <= r.lds_bytes <= isa.LDS_LIMIT[arch], f"{r.kernel} {r.config}: {r.lds_bytes} B LDS on {arch}"


def test_gfx942_occupancy_of_moe_and_gemm_defaults(records):
    recs = [r for r in records("gfx942") if r.source == "default" and r.kernel.startswith(("moe_gemm", "fp8_gemm"))]
    assert len(recs) == 6
    for r in recs:
        assert r.occupancy >= 2, f"{r.kernel} {r.config}: {r.occupancy} waves/SIMD on gfx942"
        assert r.vgpr + r.agpr <= 256, f"{r.kernel}: {r.vgpr}+{r.agpr} registers cannot give 2 waves/SIMD"


def test_isa_command_json_and_table():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    cmd = [sys.executable, "-m", "amd_llama4.cli", "isa", "--arch", "gfx942", "--kernel", "top1", "--kernel", "fp8_gemm",
           "--no-native"]
    res = subprocess.run(cmd + ["--json"], capture_output=True, text=True, env=env, check=True)
    recs = json.loads(res.stdout)
    assert {r["kernel"] for r in recs} == {"top1_sigmoid", "fp8_gemm[channel]", "fp8_gemm[block128]"}
    for r in recs:
        assert set(FIELDS) <= set(r)
    table = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True).stdout
    assert "fp8_gemm[channel]" in table and "mfma" in table.splitlines()[1]


def test_native_records_merge(monkeypatch, tmp_path):
    import types

    (tmp_path / "gfx942").mkdir()
    (tmp_path / "gfx942" / "moe.s").write_text("; built")
    fake = types.ModuleType("amd_llama4.tools.hip_isa")
    fake.hip_kernel_records = lambda arch, build_dir=None: [
        {"kernel": "rms_norm", "config": "bf16", "vgpr": 20, "agpr": 0, "sgpr": 30, "vgpr_spill": 0,
         "sgpr_spill": 0, "scratch_bytes": 0, "lds_bytes": 512, "occupancy": 8, "mfma": 0, "extra": "ignored"}]
    monkeypatch.setitem(sys.modules, "amd_llama4.tools.hip_isa", fake)
    recs = isa.native_records("gfx942", tmp_path)
    assert [(r.kernel, r.source, r.lds_bytes, r.occupancy) for r in recs] == [("rms_norm", "native", 512, 8.0)]
    assert isa.native_records("sm_90", tmp_path) == []  # HIP records are AMD only
    assert isa.native_records("gfx942", tmp_path / "nothing-built") == []  # not built, not compiled
    monkeypatch.setitem(sys.modules, "amd_llama4.tools.hip_isa", None)  # absent module
    assert isa.native_records("gfx942", tmp_path) == []


def test_sm90_occupancy_model():
    assert isa._sm90_occupancy(regs=64, shared=0, num_warps=4) == 8.0  # 64 regs: 32 warps/SM
    assert isa._sm90_occupancy(regs=255, shared=0, num_warps=4) == 2.0
    assert isa._sm90_occupancy(regs=32, shared=120 * 1024, num_warps=4) == 1.0  # one block fits in 228 KiB
