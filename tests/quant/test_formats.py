"""e4m3fn -> e4m3fnuz exactness, and no NaN/inf for outlier activations (x 1e4) anywhere."""
import pytest
import torch

from amd_llama4 import load_model, ops
from amd_llama4.config import QuantConfig
from amd_llama4.tools.quant_accuracy import teacher_forced_logits
from amd_llama4.quant.fp8 import FP8Experts, FP8Linear, convert_model_format


def _awkward(shape, seed=0):
    """Gaussians plus -0, fn subnormals, the fn maximum and values that round to -0."""
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    flat = x.view(-1)
    flat[:4] = torch.tensor([-0.0, -1e-9, 2.0 ** -9, -448.0])
    return x


@pytest.mark.parametrize("granularity,block", [("row", None), ("col", None), ("block", (128, 128)), ("tensor", None)])
def test_fn_to_fnuz_dequantises_identically(granularity, block):
    x = _awkward((129, 257))
    q, s = ops.quantize_fp8(x, "e4m3fn", granularity, block)
    assert (q.view(torch.uint8) == 0x80).any()  # -0 is present in fn ...
    qz, sz = ops.fn_to_fnuz(q, s)
    assert qz.dtype == torch.float8_e4m3fnuz and not (qz.view(torch.uint8) == 0x80).any()  # ... never NaN in fnuz
    assert torch.equal(ops.dequantize_fp8(qz, sz, block), ops.dequantize_fp8(q, s, block))


def test_fn_model_converted_to_fnuz_has_identical_dequantised_weights():
    fn = load_model("tiny-maverick", quantization=QuantConfig(method="fp8", fp8_format="e4m3fn"))
    want = {n: _deq(m) for n, m in fn.named_modules() if isinstance(m, (FP8Linear, FP8Experts))}
    convert_model_format(fn, "e4m3fnuz")
    got = {n: _deq(m) for n, m in fn.named_modules() if isinstance(m, (FP8Linear, FP8Experts))}
    assert len(got) == len(want) > 0
    for n in want:
        assert all(t.dtype == torch.float8_e4m3fnuz for t in fn.get_submodule(n).parameters() if t.dim() and
                   t.element_size() == 1)
        for a, b in zip(want[n], got[n]):
            assert torch.equal(a, b), n


def _deq(m):
    if isinstance(m, FP8Linear):
        return [ops.dequantize_fp8(m.weight, m.weight_scale, m.block)]
    return [ops.dequantize_fp8(m.gate_up_proj, m.gate_up_proj_scale),
            ops.dequantize_fp8(m.down_proj, m.down_proj_scale)]


@pytest.mark.parametrize("fmt", ["e4m3fn", "e4m3fnuz"])
def test_quantize_outliers_finite(fmt):
    x = torch.randn(7, 129) * 1e4
    x[3, 5] = 3e38  # near fp32 max
    x[0] = 0.0  # an all-zero row: the scale floor keeps it finite
    for gran, block in (("row", None), ("block", (1, 128)), ("tensor", None)):
        q, s = ops.quantize_fp8(x, fmt, gran, block)
        d = ops.dequantize_fp8(q, s, block)
        assert torch.isfinite(d).all(), (fmt, gran)
    # a static scale far too small saturates instead of producing NaN/inf
    q, _ = ops.quantize_fp8(x, fmt, "tensor", scale=torch.tensor([[1e-6]]))
    assert torch.isfinite(q.float()).all() and q.float().abs().max() == ops.FP8_MAX[fmt]


@pytest.mark.parametrize("fmt", ["e4m3fn", "e4m3fnuz"])
def test_model_with_outlier_activations_has_finite_logits(fmt):
    """Outlier channels x 1e4 at every linear's input (through the norm weights), outlier tokens x 1e4 in
    the residual stream (embedding rows), and static KV scales 1e4 too small (forced saturation):
    fp8 weights, activations and KV cache, logits finite."""
    m = load_model("tiny-scout", quantization=QuantConfig(method="fp8", fp8_format=fmt))
    with torch.no_grad():
        m.model.embed_tokens.weight[100:200] *= 1e4
        for layer in m.model.layers:
            layer.input_layernorm.weight[:8] *= 1e4
            layer.post_attention_layernorm.weight[:8] *= 1e4
    seen = []
    m.model.layers[1].self_attn.q_proj.register_forward_hook(lambda mod, a, out: seen.append(a[0].abs().max()))
    ids = [5, 6, 7, 150, 8, 160, 170, 9] * 8
    assert torch.isfinite(teacher_forced_logits(m, ids, kv_cache_dtype="fp8", fmt=fmt)).all()
    assert max(seen) > 1e3  # the outliers really reach the fp8 GEMMs
    m.kv_scales = {i: {"k": torch.tensor([1e-4]), "v": torch.tensor([1e-4])} for i in range(4)}
    assert torch.isfinite(teacher_forced_logits(m, ids, kv_cache_dtype="fp8", fmt=fmt, tokens_per_step=16)).all()


@pytest.mark.parametrize("fmt", ["e4m3fn", "e4m3fnuz"])
def test_kv_cache_saturates_with_loaded_scales(fmt):
    from amd_llama4.config import preset
    from amd_llama4.engine.kv_cache import KVCache

    cfg = preset("tiny-scout")
    scales = {0: {"k": torch.tensor([0.5, 0.25]), "v": torch.tensor([0.125])}}  # per head / per tensor
    cache = KVCache(cfg, 4, 16, torch.float32, "cpu", "fp8", fmt, scales)
    k = torch.randn(7, 2, 32) * 1e4
    v = torch.randn(7, 2, 32)
    slots = torch.arange(3, 10)
    cache.write(0, k, v, slots)
    kc, vc, ks, vs = cache.paged(0)  # fp8 pages [blocks, block, Hkv, D], static scales [Hkv]
    kr, vr = (c.flatten(0, 1).float()[slots] * s[:, None] for c, s in ((kc, ks), (vc, vs)))
    fmax = ops.FP8_MAX[fmt]
    assert torch.equal(cache.scales[0, 0], torch.tensor([0.5, 0.25]))  # loaded, not recalibrated
    torch.testing.assert_close(kr.abs().amax(dim=(0, 2)), torch.tensor([0.5, 0.25]) * fmax)
    torch.testing.assert_close(vr, v, atol=0.125 * fmax / 16 * 1.01, rtol=0.07)
