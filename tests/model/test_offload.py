"""CPU expert offload (model/offload.py): placement rules, what lands in host memory, and the same
greedy tokens with and without offload (the host path: copy in, native CPU kernel, copy back)."""
from __future__ import annotations

import importlib.util
import re

import pytest
import torch

from amd_llama4.config import preset
from amd_llama4.model import offload
from amd_llama4.model.loader import build_model, load_model
from amd_llama4.model.offload import (OffloadedExperts, check_offload_spec, offload_bytes, offload_experts,
                                      offloaded_layers, offloaded_parameters, parse_offload)


# -- placement rules --------------------------------------------------------------------------------

def test_parse_all_n_and_zero():
    scout = preset("scout")
    assert parse_offload("all", scout) == tuple(range(48))
    assert parse_offload(" ALL ", scout) == tuple(range(48))
    assert parse_offload(5, scout) == (0, 1, 2, 3, 4)  # the first N MoE layers (llama.cpp's --n-cpu-moe)
    assert parse_offload("5", scout) == parse_offload(5, scout)
    assert parse_offload(0, scout) == () and parse_offload(None, scout) == ()
    assert parse_offload(48, scout) == parse_offload("all", scout)


def test_maverick_counts_moe_layers_only():
    mav = preset("maverick")  # MoE every second layer: 1, 3, ..., 47
    assert parse_offload(3, mav) == (1, 3, 5)
    assert parse_offload("all", mav) == tuple(range(1, 48, 2))
    with pytest.raises(ValueError, match=r"--cpu-offload-experts 25: the model has 24 MoE layers \(of 48\)"):
        parse_offload(25, mav)


@pytest.mark.parametrize("bad", [49, -1, "-2", "half", "1.5", True, 2.0])
def test_bad_specs_name_the_flag(bad):
    with pytest.raises(ValueError, match="--cpu-offload-experts"):
        parse_offload(bad, preset("scout"))


@pytest.mark.parametrize("spec, want", [(None, None), ("all", "all"), ("All", "all"), ("3", 3), (0, 0), (7, 7)])
def test_engine_args_spec(spec, want):
    from amd_llama4.engine.llm_engine import EngineArgs

    a = EngineArgs(model="tiny-scout", cpu_offload_experts=spec)
    assert a.cpu_offload_experts == want
    # host-run experts sync the step with the host: decode graphs cannot capture them
    assert a.enforce_eager is (want not in (None, 0))
    assert check_offload_spec(spec) == want


@pytest.mark.parametrize("bad", ["some", "-1", -3, 1.0])
def test_engine_args_bad_spec(bad):
    from amd_llama4.engine.llm_engine import EngineArgs

    with pytest.raises(ValueError, match="--cpu-offload-experts"):
        EngineArgs(model="tiny-scout", cpu_offload_experts=bad)


def test_cli_flag():
    import argparse

    from amd_llama4.commands._engine_flags import add_engine_flags, engine_kwargs

    p = argparse.ArgumentParser()
    add_engine_flags(p)
    assert engine_kwargs(p.parse_args(["--cpu-offload-experts", "all"]))["cpu_offload_experts"] == "all"
    assert "cpu_offload_experts" not in engine_kwargs(p.parse_args([]))


def test_layer_too_large_errors_at_load():
    with pytest.raises(ValueError, match="--cpu-offload-experts 5: the model has 4 MoE layers"):
        load_model("tiny-scout", device="meta", cpu_offload_experts=5)


def test_offload_refuses_a_dense_layer():
    model = build_model(preset("tiny-maverick"), device="meta")
    with pytest.raises(ValueError, match="--cpu-offload-experts: layer 0 is not a MoE layer"):
        offload_experts(model, [0])


# -- full-size skeletons (meta: nothing allocated) ---------------------------------------------------

def _expert_names(layers):
    return {f"model.layers.{i}.feed_forward.experts.{w}" for i in layers for w in ("gate_up_proj", "down_proj")}


@pytest.mark.parametrize("kind, spec, layers", [("scout", "all", range(48)), ("scout", 7, range(7)),
                                                ("maverick", 4, (1, 3, 5, 7)), ("maverick", 0, ())])
def test_full_size_placement_and_bytes(kind, spec, layers):
    cfg = preset(kind)
    m = load_model(kind, device="meta", dtype=torch.bfloat16, progress=False, cpu_offload_experts=spec)
    assert offloaded_layers(m) == list(layers)
    assert set(offloaded_parameters(m)) == _expert_names(layers)
    # exactly the routed experts of those layers: E x 3 H I bf16 weights per layer
    per_layer = cfg.num_local_experts * 3 * cfg.hidden_size * cfg.intermediate_size * 2
    assert offload_bytes(m) == len(layers) * per_layer
    dense = [i for i in range(cfg.num_hidden_layers) if not cfg.is_moe_layer(i)]
    for i in dense:  # dense layers (Maverick's even ones) untouched
        assert not hasattr(m.model.layers[i].feed_forward, "experts")
    # everything else (attention, router, shared expert, dense MLPs, embeddings) stays on the device
    assert all(not isinstance(mod, OffloadedExperts) for n, mod in m.named_modules()
               if not re.fullmatch(r"model\.layers\.\d+\.feed_forward\.experts", n))
    from amd_llama4.tools.planner import param_counts

    pc = param_counts(cfg)  # the planner's expert count agrees with the model's
    assert offload_bytes(m) == len(layers) * pc.experts // pc.moe_layers * 2


@pytest.fixture(scope="module")
def maverick_fp8(tmp_path_factory):
    from tests.model.released import write_header_only

    folder = tmp_path_factory.mktemp("released") / "maverick-fp8"
    return str(folder), write_header_only(str(folder), "maverick-fp8")


def test_released_fp8_checkpoint_headers_only(maverick_fp8, monkeypatch):
    """Meta's FP8 Maverick layout (headers only): the fp8 experts and their scales go to the host."""
    from amd_llama4.model import safetensors_io
    from amd_llama4.quant.fp8 import FP8Experts
    from tests.model.released import nbytes

    monkeypatch.setattr(safetensors_io, "safe_open", lambda *a, **k: pytest.fail("tensor data was read"))
    folder, table = maverick_fp8
    m = load_model(folder, device="meta", dtype=torch.bfloat16, progress=False, cpu_offload_experts=2)
    assert offloaded_layers(m) == [1, 3]
    ex = m.model.layers[1].feed_forward.experts
    assert isinstance(ex, FP8Experts) and isinstance(ex, OffloadedExperts)
    assert set(offloaded_parameters(m)) == {f"model.layers.{i}.feed_forward.experts.{w}" for i in (1, 3) for w in
                                            ("gate_up_proj", "gate_up_proj_scale", "down_proj", "down_proj_scale")}
    in_ckpt = sum(nbytes(*v) for n, v in table.items() if re.search(r"\.layers\.(1|3)\.feed_forward\.experts\.", n))
    # the checkpoint's fp8 weights are what the host holds (scales: ours fp32 per channel, as loaded)
    weights = sum(t.numel() * t.element_size() for n, t in offloaded_parameters(m).items() if not n.endswith("scale"))
    assert weights == 2 * 128 * 3 * 5120 * 8192 and in_ckpt >= weights


# -- the host really holds them while the model is elsewhere ("fake GPU": the model on meta) ---------

def test_experts_materialise_on_host_when_the_model_goes_elsewhere():
    cfg = preset("tiny-maverick")
    model = offload_experts(build_model(cfg, device="meta"), parse_offload("all", cfg), host="cpu")
    model = model.to_empty(device="meta")  # stands in for the GPU: everything else goes there
    host = offloaded_parameters(model)
    assert host and all(t.device.type == "cpu" for t in host.values())
    assert all(p.device.type == "meta" for n, p in model.named_parameters() if n not in host)
    model.to(torch.bfloat16)  # dtype changes pass, placement stays
    assert all(t.device.type == "cpu" and t.dtype == torch.bfloat16 for t in offloaded_parameters(model).values())
    assert "host=cpu" in repr(model.model.layers[1].feed_forward.experts)


# -- same numbers and tokens through the host path ----------------------------------------------------

@pytest.fixture
def native_spy(monkeypatch):
    """Counts native fused_moe calls and checks they receive host tensors."""
    from amd_llama4.ops import dispatch

    dispatch._load("native")
    impls = dispatch._REGISTRY["fused_moe"]
    if "native" not in impls:
        pytest.skip("native extension not built")
    old = impls["native"]
    calls = []

    def spy(x, *rest):
        calls.append(x.device.type)
        return old.fn(x, *rest)

    monkeypatch.setitem(impls, "native", dispatch.Impl(spy, old.supports))
    dispatch._candidates.cache_clear()
    yield calls
    dispatch._candidates.cache_clear()


def test_loaded_model_logits_equal(native_spy):
    base = load_model("tiny-scout", device="cpu", progress=False)
    m = load_model("tiny-scout", device="cpu", progress=False, cpu_offload_experts=3)
    assert offloaded_layers(m) == [0, 1, 2]
    seen = []
    for i in range(3):
        m.model.layers[i].feed_forward.experts.register_forward_hook(
            lambda mod, args, out: seen.append((args[0].data_ptr(), out.data_ptr())))
    ids = torch.tensor([[5, 17, 250, 3, 99, 400, 12, 7, 61]])
    torch.testing.assert_close(m(ids), base(ids), rtol=0, atol=0)
    assert len(seen) == 3 and native_spy and set(native_spy) == {"cpu"}
    # offloading an already loaded model gives the same too, and is idempotent
    offload_experts(base, [3])
    offload_experts(base, [3])
    assert offloaded_layers(base) == [3]
    torch.testing.assert_close(base(ids), m(ids), rtol=0, atol=0)


def test_host_path_copies_in_and_out(monkeypatch):
    """The wrapped forward gets fresh host copies, and the caller a fresh result (not an alias)."""
    from amd_llama4.model.llama4 import Experts

    got = {}
    orig = Experts.forward

    def record(self, x, w, ids):
        got["in"] = x
        got["out"] = orig(self, x, w, ids)
        return got["out"]

    monkeypatch.setattr(Experts, "forward", record)
    m = load_model("tiny-scout", device="cpu", progress=False, seed=1, cpu_offload_experts=1)
    ex = m.model.layers[0].feed_forward.experts
    x = torch.randn(5, 128)
    w = torch.rand(5, 1)
    ids = torch.tensor([[0], [3], [3], [7], [1]], dtype=torch.int32)
    out = ex(x, w, ids)
    assert got["in"].data_ptr() != x.data_ptr() and out.data_ptr() != got["out"].data_ptr()
    from amd_llama4.ops.moe import moe_dense_reference

    want = moe_dense_reference(x, ex.gate_up_proj, ex.down_proj, w, ids)
    torch.testing.assert_close(out, want, rtol=1.3e-6, atol=1e-5)


def _greedy(**kw):
    from amd_llama4 import LLM, SamplingParams

    llm = LLM("tiny-scout", **kw)
    try:
        outs = llm.generate(["def main(", "Return the"], SamplingParams(temperature=0.0, max_tokens=8))
        return [o.outputs[0].token_ids for o in outs]
    finally:
        llm.shutdown()


@pytest.mark.parametrize("quant", [None, "fp8"])
def test_same_greedy_tokens(quant, native_spy):
    want = _greedy(quantization=quant)
    native_spy.clear()
    got = _greedy(quantization=quant, cpu_offload_experts="all")
    assert got == want and all(len(t) == 8 for t in got)
    if quant is None:
        assert native_spy and set(native_spy) == {"cpu"}


_INT4 = all(importlib.util.find_spec(m) is not None for m in ("amd_llama4.quant.int4", "amd_llama4.ops.int4"))


@pytest.mark.skipif(not _INT4, reason="int4 experts/ops (amd_llama4/quant/int4.py, ops/int4.py) not in this tree yet")
def test_int4_experts_offloaded():
    from amd_llama4.config import QuantConfig
    from amd_llama4.quant.int4 import Int4Experts, quantize_model_int4

    q = QuantConfig(method="int4", group_size=32)
    m = quantize_model_int4(load_model("tiny-scout", device="cpu", progress=False), q)
    ids = torch.tensor([[5, 17, 250, 3, 99, 400, 12]])
    want = m(ids)
    offload_experts(m, [0, 2])
    ex = m.model.layers[0].feed_forward.experts
    assert isinstance(ex, Int4Experts) and isinstance(ex, OffloadedExperts)
    torch.testing.assert_close(m(ids), want, rtol=0, atol=0)
    # through the loader: online int4 with the experts of the first two MoE layers filled on the host
    m2 = load_model("tiny-scout", device="cpu", progress=False, quantization=q, cpu_offload_experts=2)
    assert offloaded_layers(m2) == [0, 1]
    assert isinstance(m2.model.layers[1].feed_forward.experts, Int4Experts)
    torch.testing.assert_close(m2(ids), want, rtol=1e-5, atol=1e-5)


# -- the GPU path's ordering, with a recording stand-in for torch.cuda (no GPU here) ------------------

class _FakeCuda:
    """Records what the GPU path asks of streams and events; the work itself runs on the CPU."""

    def __init__(self, log):
        self.log = log
        test = self

        class Event:
            def __init__(self, where):
                self.where = where

        class Stream:
            def __init__(self, device=None, name="side"):
                self.name, self.device = name, torch.device("cpu")

            def record_event(self):
                test.log.append(("record", self.name))
                return Event(len(test.log))

            def wait_event(self, ev):
                test.log.append(("wait", self.name, ev.where))

            def synchronize(self):
                test.log.append(("sync", self.name))

        self.Stream, self.main = Stream, Stream(name="main")
        self.current = self.main

    def current_stream(self, device=None):
        return self.current

    def stream(self, s):
        import contextlib

        @contextlib.contextmanager
        def ctx():
            prev, self.current = self.current, s
            yield
            self.current = prev

        return ctx()


@pytest.fixture
def fake_gpu(monkeypatch):
    log = []
    fake = _FakeCuda(log)
    for name in ("current_stream", "stream", "Stream"):
        monkeypatch.setattr(torch.cuda, name, getattr(fake, name))
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)
    monkeypatch.setattr(offload, "_on_gpu", lambda t: True)
    monkeypatch.setattr(offload, "_pinned_copy", lambda t: log.append(("d2h", fake.current.name)) or t.clone())
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda t: log.append(("h2d", fake.current.name)) or t)
    return log


def test_gpu_path_ordering(fake_gpu):
    """Side stream waits for the event recorded before the shared expert, copies in, the host waits for
    the side stream only, computes, and the copy back is queued on the main stream."""
    from amd_llama4.model.llama4 import Experts

    base = load_model("tiny-scout", device="cpu", progress=False)
    m = load_model("tiny-scout", device="cpu", progress=False, cpu_offload_experts=1)
    moe = m.model.layers[0].feed_forward
    moe.shared_expert.register_forward_hook(lambda *a: fake_gpu.append(("shared",)))
    x = torch.randn(1, 3, 128)
    got = moe(x)
    torch.testing.assert_close(got, base.model.layers[0].feed_forward(x), rtol=0, atol=0)
    ready = fake_gpu.index(("record", "main")) + 1  # the hook's event, before the shared expert ran
    assert fake_gpu == [("record", "main"), ("shared",), ("wait", "side", ready), ("d2h", "side"), ("d2h", "side"),
                        ("d2h", "side"), ("sync", "side"), ("h2d", "main")]
    assert isinstance(moe.experts, Experts) and moe.experts._offload_ready is None  # consumed
    # called on their own (no pre-hook for these inputs): the event is recorded at the call
    fake_gpu.clear()
    moe.experts(torch.randn(2, 128), torch.rand(2, 1), torch.tensor([[1], [6]], dtype=torch.int32))
    assert fake_gpu[:2] == [("record", "main"), ("wait", "side", 1)]


@pytest.mark.parametrize("ep", [False, True])
def test_tensor_parallel_rank_offloads_its_slice(ep):
    """A rank's experts (its slice of every expert, or whole experts with expert parallel) go to the
    host; under expert parallel no early start is armed (its weights/ids are made after the shared
    expert is queued), without it the shared expert's pre-hook is."""
    from amd_llama4.parallel.tp import Parallel

    cfg = preset("scout")
    m = load_model("scout", device="meta", dtype=torch.bfloat16, progress=False, parallel=Parallel(1, 4, ep),
                   cpu_offload_experts=2)
    per_rank = cfg.num_local_experts * 3 * cfg.hidden_size * cfg.intermediate_size * 2 // 4
    assert offloaded_layers(m) == [0, 1] and offload_bytes(m) == 2 * per_rank
    moe = m.model.layers[0].feed_forward
    assert bool(moe.shared_expert._forward_pre_hooks) is not ep


@pytest.mark.parametrize("qtype, quant", [("f32", None), ("q4_0", "int4")])
def test_gguf_files_offload(tmp_path, qtype, quant):
    """llama.cpp GGUF files (amd_llama4/gguf): dequantised at load, or Q4_0 kept as int4 experts."""
    pytest.importorskip("gguf")
    from amd_llama4.tools.gguf_export import export_gguf

    path = export_gguf("tiny-scout", tmp_path / f"tiny-{qtype}.gguf", qtype)
    kw = dict(progress=False, device="cpu", dtype=torch.float32, quantization=quant)
    base, m = load_model(path, **kw), load_model(path, cpu_offload_experts="all", **kw)
    assert offloaded_layers(m) == [0, 1, 2, 3]
    ids = torch.tensor([[5, 17, 250, 3, 99, 400, 12]])
    torch.testing.assert_close(m(ids), base(ids), rtol=0, atol=0)
