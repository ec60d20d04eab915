"""The int4 w4a16 Triton kernels (ops/triton/int4.py) compiled ahead of time for gfx942, gfx950 and
sm_90 at the launcher's fixed tiles, with the gates of tests/tools/test_isa.py: matrix instructions
(v_mfma; wgmma for 64-row tiles on sm_90, mma.sync below), no spills or scratch, LDS within the
limit, at least 2 waves per SIMD on gfx942 / CDNA."""
import os

import pytest

if os.environ.get("CI") == "true":
    import triton  # noqa: F401
else:
    pytest.importorskip("triton")

from amd_llama4.tools import isa  # noqa: E402

KERNELS = {"int4_gemm[m16,g128]", "int4_gemm[m64,g128,zp]", "int4_gemm[m16,g32,zp]", "int4_moe[gate_up,m16]",
           "int4_moe[down,m16]", "int4_moe[gate_up,m64,zp]"}


@pytest.mark.slow
def test_int4_kernels_compile_with_matrix_instructions_and_no_spills():
    for arch in isa.ARCHS:
        recs = isa.triton_records(arch, kernels=["int4_"], tuned=False)
        assert {r.kernel for r in recs} == KERNELS, arch
        for r in recs:
            what = f"{r.kernel} on {arch}: {r}"
            assert (r.vgpr_spill, r.sgpr_spill, r.scratch_bytes) == (0, 0, 0), what
            assert 0 <= r.lds_bytes <= isa.LDS_LIMIT[arch], what
            if arch.startswith("gfx"):
                assert r.mfma > 0 and r.occupancy >= 2, what
                assert r.vgpr + r.agpr <= 256, what
            else:
                assert r.mfma + r.mma_sync > 0, what
                if "m64" in r.kernel:
                    assert r.mfma > 0, f"no wgmma: {what}"
                assert r.occupancy >= 2, what
