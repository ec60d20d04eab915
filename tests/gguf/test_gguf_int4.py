"""Q4_0 GGUF tensors kept as our int4 layout (group 32, symmetric) bit for bit: quantization="int4"."""
import numpy as np
import pytest
import torch

from amd_llama4 import load_model
from amd_llama4.gguf import GGUFError
from amd_llama4.gguf.int4 import q4_0_to_int4
from amd_llama4.tools.gguf_export import export_gguf
from amd_llama4.ops.int4 import dequantize_int4

gguf = pytest.importorskip("gguf")


@pytest.mark.parametrize("n,k", [(5, 96), (1, 32), (7, 256)])
def test_q4_0_bytes_to_int4_exact(n, k):
    w = torch.randn(n, k, generator=torch.Generator().manual_seed(n * k)).numpy()
    raw = gguf.quants.quantize(w, gguf.GGMLQuantizationType.Q4_0)
    want = gguf.quants.dequantize(raw, gguf.GGMLQuantizationType.Q4_0).reshape(n, k)
    qw, s = q4_0_to_int4(raw, n, k)
    assert qw.dtype == torch.uint8 and qw.shape == (n, k // 2) and s.shape == (n, k // 32)
    torch.testing.assert_close(dequantize_int4(qw, s, None, 32), torch.from_numpy(want), rtol=0, atol=0)


def test_q4_0_bad_shape_names_tensor():
    raw = np.zeros((4, 18), dtype=np.uint8)
    with pytest.raises(GGUFError, match=r"x\.gguf: 'blk\.0\.attn_q\.weight'.*\[4, 64\]"):
        q4_0_to_int4(raw, 4, 64, "x.gguf: 'blk.0.attn_q.weight'")


@pytest.fixture(scope="module")
def q4_file(tmp_path_factory):
    return export_gguf("tiny-scout", tmp_path_factory.mktemp("gguf_int4") / "tiny-q4_0.gguf", "q4_0")


def test_load_q4_0_as_int4_equals_dequantised(q4_file):
    from amd_llama4.quant.int4 import Int4Experts, Int4Linear

    deq = load_model(q4_file, progress=False, device="cpu", dtype=torch.float32)
    q = load_model(q4_file, progress=False, device="cpu", dtype=torch.float32, quantization="int4")
    kinds = {type(m) for m in q.modules()}
    assert Int4Linear in kinds and Int4Experts in kinds
    ex = q.model.layers[0].feed_forward.experts
    assert ex.group_size == 32 and ex.w13_z is None and ex.w13_q.dtype == torch.uint8
    ids = torch.randint(0, 512, (2, 37), generator=torch.Generator().manual_seed(3))
    want = deq(ids)
    torch.testing.assert_close(q(ids), want, rtol=1e-4, atol=1e-4 * want.abs().max().item())


def test_int4_on_a_file_without_q4_0_quantises_online(tmp_path):
    path = export_gguf("tiny-scout", tmp_path / "tiny-f16.gguf", "f16")
    q = load_model(path, progress=False, device="cpu", dtype=torch.float32, quantization="int4")
    gate = q.model.layers[0].feed_forward.shared_expert.gate_proj  # hidden 128: one group of QuantConfig's 128
    assert gate.group_size == 128 and gate.qweight.dtype == torch.uint8
