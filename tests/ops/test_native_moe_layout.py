"""Native CPU fused MoE on output-major expert weights (the layout a CPU model keeps: transposed views
of contiguous [E, 2I, H] / [E, H, I]) against the torch reference and the input-major native result:
one row per expert (row_dots), a few (row tiles), many (dot-product tiles over K blocks), odd shapes,
empty experts, the other ISAs, the layout rules and the loader's copy into the layout."""
from __future__ import annotations

import pytest
import torch

from amd_llama4 import ops
from amd_llama4.ops import native
from amd_llama4.ops.moe import moe_dense_reference
from native_helpers import TOL, moe_inputs, require_native

pytestmark = pytest.mark.usefixtures("_native")


@pytest.fixture
def _native():
    require_native()


def out_major(w: torch.Tensor) -> torch.Tensor:
    return w.transpose(1, 2).contiguous().transpose(1, 2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("T,H,E,inter,k,route", [
    (1, 1024, 16, 256, 1, None),            # decode: one row, row_dots
    (1, 77, 3, 56, 1, None),                # K and output tails (77 = 4 * 19 + 1)
    (3, 129, 4, 96, 2, None),               # one row per expert, top-2
    (8, 96, 9, 40, 1, "same"),              # 8 rows on one expert: row tiles
    (7, 200, 16, 72, 2, None),
    (160, 1030, 3, 520, 1, None),           # > 16 rows per expert: dot tiles, two K blocks (1030 > 1024)
    (129, 72, 128, 40, 2, None),            # many experts, few rows each, and empty ones
])
def test_fused_moe_output_major(dtype, T, H, E, inter, k, route):
    x, w1, w2, tw, ids = moe_inputs(T, H, E, inter, k, dtype)
    if route == "same":
        ids = torch.full_like(ids, 4)
    want = ops.fused_moe(x, w1, w2, tw, ids, backend="torch")
    w1o, w2o = out_major(w1), out_major(w2)
    assert native.output_major(w1o) and native.output_major(w2o)
    got = native.fused_moe(x, w1o, w2o, tw, ids)
    torch.testing.assert_close(got, want, **TOL[dtype])
    torch.testing.assert_close(got, native.fused_moe(x, w1, w2, tw, ids), **TOL[dtype])
    if dtype == torch.float32:
        torch.testing.assert_close(got, moe_dense_reference(x, w1, w2, tw, ids), **TOL[dtype])


def test_fused_moe_output_major_views_are_not_copied():
    """The views reach the kernel as they are (no per-call .contiguous() copy of the experts); mixed
    layouts are made contiguous. (Mixed expert loads: test_native_ops.test_fused_moe_mixed_expert_loads.)"""
    _, w1, w2, _, _ = moe_inputs(3, 64, 4, 32, 1, torch.float32)
    w1, w2 = out_major(w1), out_major(w2)
    a, b = native._moe_weights(w1, w2)
    assert a.data_ptr() == w1.data_ptr() and a.stride() == w1.stride() and b.stride() == w2.stride()
    a, b = native._moe_weights(w1, w2.contiguous())
    assert a.is_contiguous() and b.is_contiguous()


def test_fused_moe_layout_errors():
    """_C names the rule when the two weights' layouts differ or a weight is some other view."""
    x, w1, w2, tw, ids = moe_inputs(3, 64, 4, 32, 1, torch.float32)
    out = torch.empty_like(x)
    ref = native._ref
    sliced = torch.cat([w1, w1], dim=2)[:, :, : w1.shape[2]]  # strided, but not a transposed layout
    for a, b in ((out_major(w1), w2), (w1, out_major(w2)), (sliced, w2)):
        with pytest.raises(ValueError, match="w_gate_up .* and w_down .* must both be contiguous"):
            native._C.fused_moe(ref(x, "x"), ref(a, "w_gate_up"), ref(b, "w_down"), ref(tw, "topk_weights"),
                                ref(ids, "topk_ids"), None, None, ref(out, "out"))


@pytest.mark.parametrize("isa", ["avx2", "base"])
def test_fused_moe_output_major_other_isas(isa):
    """The AVX2 and baseline bodies of the output-major paths (one row, row tiles, dot tiles)."""
    import os
    import subprocess
    import sys

    code = ("import torch; from amd_llama4 import ops; from amd_llama4.ops import native as N;"
            f"assert N.build_info()['cpu_isa'] in ({isa!r}, 'base');"
            "om = lambda w: w.transpose(1, 2).contiguous().transpose(1, 2);"
            "g = torch.Generator().manual_seed(0);"
            "w1 = torch.randn(5, 100, 80, generator=g) / 10; w2 = torch.randn(5, 40, 100, generator=g) / 7\n"
            "for T, E in ((1, 5), (7, 5), (12, 1), (64, 2)):\n"
            "  x = torch.randn(T, 100, generator=g)\n"
            "  tw, ids = ops.moe_topk_sigmoid(torch.randn(T, E, generator=g), 1, backend='torch')\n"
            "  for dt, tol in ((torch.float32, 1e-4), (torch.bfloat16, 2e-2)):\n"
            "    a, b, c = x.to(dt), w1[:E].to(dt), w2[:E].to(dt)\n"
            "    torch.testing.assert_close(N.fused_moe(a, om(b), om(c), tw, ids),"
            " ops.fused_moe(a, b, c, tw, ids, backend='torch'), rtol=tol, atol=tol)\n")
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "AMD_LLAMA4_CPU_ISA": isa})


def test_cpu_model_experts_are_output_major():
    """build_model on CPU stores the routed experts output-major, and offloaded ones (host memory)
    on any device; otherwise they stay contiguous (the GPU kernels read HF's layout). Loading writes
    through the view."""
    from amd_llama4.config import Llama4Config
    from amd_llama4.model.llama4 import Experts
    from amd_llama4.model.loader import build_model

    cfg = Llama4Config(vocab_size=64, hidden_size=32, intermediate_size=48, intermediate_size_mlp=64,
                       num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1, head_dim=16,
                       num_local_experts=3, num_experts_per_tok=1)
    cpu = [m for m in build_model(cfg, torch.float32, "cpu").modules() if type(m) is Experts]
    meta = [m for m in build_model(cfg, torch.float32, "meta").modules() if type(m) is Experts]
    assert cpu and meta
    for m in cpu:
        assert m.gate_up_proj.shape == (3, 32, 96) and native.output_major(m.gate_up_proj)
        assert m.down_proj.shape == (3, 48, 32) and native.output_major(m.down_proj)
        src = torch.randn(3, 32, 96)
        with torch.no_grad():
            m.gate_up_proj.copy_(src)
        torch.testing.assert_close(m.gate_up_proj, src, rtol=0, atol=0)
    for m in meta:
        assert m.gate_up_proj.is_contiguous() and m.down_proj.is_contiguous()
    offloaded = build_model(cfg, torch.float32, "meta", offload=(0,)).model.layers[0].feed_forward.experts
    assert isinstance(offloaded, Experts) and native.output_major(offloaded.gate_up_proj)


@pytest.mark.parametrize("src_dtype", [torch.bfloat16, torch.float32])
def test_loader_copies_into_output_major_experts(src_dtype):
    """The loader's copy into an output-major parameter (per-expert 2-d transposes for a same-dtype
    source, the strided copy otherwise) keeps every value in its logical place."""
    from amd_llama4.model.loader import _copy_into

    src = torch.randn(3, 40, 72).to(src_dtype)
    p = out_major(torch.empty(3, 40, 72, dtype=torch.bfloat16))
    _copy_into(p, src)
    assert native.output_major(p)
    torch.testing.assert_close(p, src.bfloat16(), rtol=0, atol=0)
