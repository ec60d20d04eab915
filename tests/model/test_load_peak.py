"""Loading goes to the device tensor by tensor, FP8 quantised on the way: the peak of live bytes on the
target device is the final model plus one tensor in flight, measured here (every storage created
on the device while loading, until freed), and not the full-precision model that loading first and
quantising after would hold."""
import weakref

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from amd_llama4 import Llama4Config, load_model
from amd_llama4.config import QuantConfig
from amd_llama4.model import layouts, loader
from amd_llama4.quant.fp8 import FP8Experts, FP8Linear, quantize_model
from tests.hf_reference import save_hf

# Scaled shapes: big enough that one tensor is small against the model, small enough for CPU tests.
CFG = dict(vocab_size=1000, hidden_size=256, num_attention_heads=4, num_key_value_heads=2, head_dim=64,
           intermediate_size=192, intermediate_size_mlp=320, num_hidden_layers=6, num_local_experts=8,
           num_experts_per_tok=1, interleave_moe_layer_step=2, attention_chunk_size=16, floor_scale=4,
           bos_token_id=1, eos_token_id=2, pad_token_id=0, rope_scaling=None)
FN = QuantConfig(method="fp8", fp8_format="e4m3fn")


class DeviceBytes(TorchDispatchMode):
    """Live bytes of the storages that torch ops create on `device` (the CPU stands in for the GPU),
    and their peak. Host-side reads of the checkpoint run under `host()` and are not counted."""

    def __init__(self, device: str = "cpu"):
        super().__init__()
        self.device, self.live, self.now, self.peak, self.paused = device, {}, 0, 0, 0

    def _free(self, key):
        self.now -= self.live.pop(key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if not self.paused:
            for t in tree_flatten(out)[0]:
                if isinstance(t, torch.Tensor) and t.device.type == self.device:
                    s = t.untyped_storage()  # one Python object per storage while it lives
                    if id(s) not in self.live and s.nbytes():
                        self.live[id(s)] = s.nbytes()
                        self.now += s.nbytes()
                        self.peak = max(self.peak, self.now)
                        weakref.finalize(s, self._free, id(s))
        return out

    def host(self, fn):
        def wrapped(*a, **k):
            self.paused += 1
            try:
                return fn(*a, **k)
            finally:
                self.paused -= 1
        return wrapped


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    f = tmp_path_factory.mktemp("peak")
    save_hf(Llama4Config(**CFG), f, seed=1)  # fp32 tensors
    return f


def _measure(monkeypatch, fn):
    mode = DeviceBytes()
    monkeypatch.setattr(layouts.CheckpointSource, "load", mode.host(layouts.CheckpointSource.load))
    with mode:
        model = fn()
    return model, mode.peak


def _bytes(model) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def test_fp8_loading_peak_is_final_model_plus_one_tensor(folder, monkeypatch):
    model, peak = _measure(monkeypatch, lambda: load_model(folder, device="cpu", quantization=FN, progress=False))
    assert isinstance(model.model.layers[1].feed_forward.experts, FP8Experts)
    assert isinstance(model.model.layers[0].self_attn.q_proj, FP8Linear)
    final = _bytes(model)
    full = _bytes(load_model(folder, device="cpu", progress=False))  # the fp32 model
    largest = max(p.numel() * 4 for p in load_model(folder, device="meta", progress=False).parameters())
    # in flight: one tensor in the model dtype, its fp32 intermediates and its fp8 result
    # (measured: 1.3x the tensor in fp32)
    assert final <= peak <= final + 2 * largest, (peak, final, largest)
    assert final + 2 * largest < full  # so the bound excludes holding the full-precision model

    # the measurement catches the old way (load everything in full precision, then quantise)
    def old():
        return quantize_model(load_model(folder, device="cpu", progress=False), FN)

    _, old_peak = _measure(monkeypatch, old)
    assert old_peak >= full > final + 2 * largest
    # and the two ways give the same model
    ids = torch.randint(0, CFG["vocab_size"], (2, 9), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(model(ids), old()(ids), rtol=0, atol=0)


def test_high_precision_loading_peak_is_the_final_model(folder, monkeypatch):
    """bf16 from an fp32 checkpoint: each tensor is cast as it is copied into its place."""
    model, peak = _measure(monkeypatch, lambda: load_model(folder, device="cpu", dtype=torch.bfloat16,
                                                           progress=False))
    final = _bytes(model)
    largest = max(p.numel() * 2 for p in model.parameters())
    assert final <= peak <= final + largest, (peak, final, largest)
