"""The CPU decode step as one native call (engine/cpu_decode.py, csrc/cpu/decode_step.*) gives the
eager step's logits: RoPE and NoPE layers, QK norm, the NoPE temperature, chunk crossings, dense and
MoE layers, top-1 and top-2 routing, float32, bfloat16 and int4 weights, sequences leaving the batch.
And it steps aside (eager) where it cannot run, saying why."""
import pytest
import torch

from amd_llama4.config import QuantConfig, preset
from amd_llama4.engine import cpu_decode
from amd_llama4.engine.kv_cache import KVCache
from amd_llama4.engine.runner import ModelRunner
from amd_llama4.model.llama4 import Llama4ForCausalLM
from amd_llama4.ops import native

from paged_decode_helpers import PROMPTS, drive

pytestmark = pytest.mark.skipif(not native.available(), reason="needs the native extension")


def _model(name="tiny-scout", dtype=torch.float32, int4=None, fp8=None, **cfg):
    # chunk 8 with block 3: chunks end mid-block; floor_scale 4: the NoPE temperature moves every 4 tokens
    cfg = preset(name, attention_chunk_size=8, floor_scale=4, **cfg)
    m = Llama4ForCausalLM(cfg).init_random(seed=5, std=0.08).eval().to(dtype)
    if int4 is not None:
        from amd_llama4.quant.int4 import quantize_model_int4

        quantize_model_int4(m, int4)
    if fp8 is not None:
        from amd_llama4.quant.fp8 import quantize_model

        quantize_model(m, fp8)
    return m


def _runners(model, dtype, **kw):
    caches = [KVCache(model.config, 40, 3, dtype, "cpu", **kw) for _ in range(2)]
    eager = ModelRunner(model, caches[0], "cpu", True)
    fast = ModelRunner(model, caches[1], "cpu", max_num_seqs=4)
    return eager, fast, caches


def _count_calls(runner, monkeypatch):
    calls = []
    run = runner.native_step.run
    monkeypatch.setattr(runner.native_step, "run", lambda x, **kw: calls.append(x.batch) or run(x, **kw))
    return calls


CASES = {
    "scout-f32": dict(name="tiny-scout", dtype=torch.float32),
    "maverick-top2-f32": dict(name="tiny-maverick", dtype=torch.float32, num_experts_per_tok=2),
    "scout-bf16": dict(name="tiny-scout", dtype=torch.bfloat16),
    "scout-int4-g32-f32": dict(name="tiny-scout", dtype=torch.float32, int4=QuantConfig(method="int4", group_size=32)),
    "maverick-int4-zp-bf16": dict(name="tiny-maverick", dtype=torch.bfloat16,
                                  int4=QuantConfig(method="int4", group_size=32, zero_point=True)),
    "scout-fp8-bf16": dict(name="tiny-scout", dtype=torch.bfloat16, fp8=QuantConfig(method="fp8", fp8_format="e4m3fn")),
    "maverick-fp8fnuz-block-f32": dict(name="tiny-maverick", dtype=torch.float32,
                                       fp8=QuantConfig(method="fp8", fp8_format="e4m3fnuz", weight_block=(32, 32))),
}


@pytest.mark.parametrize("case", list(CASES))
def test_native_decode_matches_eager(case, monkeypatch):
    spec = dict(CASES[case])
    dtype = spec["dtype"]
    model = _model(**spec)
    eager, fast, caches = _runners(model, dtype)
    assert eager.native_step is None and fast.native_step is not None, cpu_decode.unsupported(model, caches[1])
    calls = _count_calls(fast, monkeypatch)
    # 12 steps: every sequence crosses a chunk boundary (8); 3 live, then 2, then 1
    ref, got = drive(model, [(eager, caches[0]), (fast, caches[1])], PROMPTS, 12, drop_after={5: 1, 9: 0})
    assert calls == [3] * 5 + [2] * 4 + [1] * 3  # every decode step natively, prefill eager
    # Same kernels and roundings: bit-identical on this machine. The tolerance leaves room for libm
    # and torch disagreeing by an ulp on a RoPE angle's cos/sin (one bf16 ulp downstream), and for
    # fp8 for an eager fp8_gemm from another backend (summation order, then an fp8 requantisation
    # of the next input can move by one fp8 step)
    tol = dict(atol=1e-5, rtol=1e-5) if dtype == torch.float32 else dict(atol=1e-2, rtol=1e-2)
    if "fp8" in spec:
        tol = dict(atol=5e-2, rtol=5e-2)
    for step, (a, b) in enumerate(zip(ref, got)):
        torch.testing.assert_close(b, a, **tol, msg=lambda m: f"{case} decode step {step}: {m}")
    for kind in caches[0].kinds:  # the native step wrote the same K/V into the same slots
        torch.testing.assert_close(caches[1].k[kind].float(), caches[0].k[kind].float(), **tol)
        torch.testing.assert_close(caches[1].v[kind].float(), caches[0].v[kind].float(), **tol)


def test_steps_wider_than_max_rows_run_eager(monkeypatch):
    model = _model()
    eager, fast, caches = _runners(model, torch.float32)
    fast.native_step = cpu_decode.CpuDecodeStep(model, caches[1], 2)  # at most 2 rows natively
    calls = _count_calls(fast, monkeypatch)
    ref, got = drive(model, [(eager, caches[0]), (fast, caches[1])], PROMPTS, 4, drop_after={2: 1})
    assert calls == [2, 2]  # 3 rows: eager; 2 rows: native
    for a, b in zip(ref, got):
        torch.testing.assert_close(b, a, atol=1e-4, rtol=1e-4)


def test_eager_where_the_native_step_cannot_run(monkeypatch):
    model = _model()
    fp8 = KVCache(model.config, 40, 3, torch.float32, "cpu", "fp8", "e4m3fn")
    assert ModelRunner(model, fp8, "cpu").native_step is None
    assert "fp8 KV cache" in cpu_decode.unsupported(model, fp8)
    auto = KVCache(model.config, 40, 3, torch.float32, "cpu")
    assert cpu_decode.unsupported(model, auto) is None
    monkeypatch.setenv("AMD_LLAMA4_BACKEND", "torch")
    assert "AMD_LLAMA4_BACKEND=torch" in cpu_decode.unsupported(model, auto)
    monkeypatch.delenv("AMD_LLAMA4_BACKEND")
    model.model.layers[1].self_attn.q_proj.bias = torch.nn.Parameter(torch.zeros(128))
    assert "model.layers.1.self_attn.q_proj has a bias" in cpu_decode.unsupported(model, auto)


def test_bad_inputs_name_the_problem():
    from amd_llama4.engine.block_manager import SeqBlocks
    from amd_llama4.engine.runner import StepItem

    model = _model()
    cache = KVCache(model.config, 40, 3, torch.float32, "cpu")
    runner = ModelRunner(model, cache, "cpu", max_num_seqs=2)
    seq = SeqBlocks()
    cache.reserve(seq, 0, 1)
    with pytest.raises(ValueError, match="token id 999 outside the vocabulary"):
        runner.execute([StepItem(seq, [999], 0)])
    bad = _model()
    bad.model.layers[2].feed_forward.shared_expert.down_proj.weight.data = torch.zeros(128, 96, dtype=torch.float64)
    with pytest.raises(cpu_decode.Unsupported, match="layers.2.mlp.down_proj.weight is torch.float64"):
        cpu_decode.CpuDecodeStep(bad, cache, 1)
    assert cpu_decode.CpuDecodeStep.build(bad, cache, 1) is None


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@torch.no_grad()  # as the runner runs the model: the eager ops then take the native kernels too
def test_hidden_states_and_logits_of_one_step(dtype):
    """The step's two outputs: final-norm hidden states (rows that sample a subset) and the fused LM
    head (every row samples) equal the eager forward's and compute_logits of them."""
    from amd_llama4.engine.block_manager import SeqBlocks
    from amd_llama4.engine.runner import StepItem

    model = _model(dtype=dtype)
    _, fast, caches = _runners(model, dtype)
    items = []
    for i, n in enumerate((7, 3, 8)):  # three sequences prefilled, then one decode row each (the
        seq = SeqBlocks()               # third one's crosses the 8-token attention chunk)
        caches[1].reserve(seq, 0, n)
        fast.execute([StepItem(seq, list(range(10 + i, 10 + i + n)), 0)])
        caches[1].reserve(seq, n, n + 1)
        items.append(StepItem(seq, [40 + i], n))
    x = fast._inputs(items)
    ref = fast._forward(x)  # the eager forward (writes the same K/V the native step writes again)
    hidden = fast.native_step.run(x)
    logits = fast.native_step.run(x, logits=True)
    torch.testing.assert_close(hidden, ref, atol=0, rtol=0)
    head = model.compute_logits(hidden)
    torch.testing.assert_close(logits, head, atol=0, rtol=0)
    assert logits.dtype == torch.float32 and logits.shape == (3, model.config.vocab_size)
    picked = fast.execute(items, rows=[2, 0])  # a subset of rows: hidden states, then the model's head
    torch.testing.assert_close(picked, head[[2, 0]], atol=0, rtol=0)


def test_profile_counts_steps_and_phases():
    """perf/bench_decode_step.py's breakdown: every step counted, every phase timed, reset on take."""
    model = _model(name="tiny-maverick")
    eager, fast, caches = _runners(model, torch.float32)
    fast.native_step.step.set_profile(True)
    drive(model, [(fast, caches[1])], PROMPTS, 3)
    prof = dict(fast.native_step.step.take_profile())
    assert prof.pop("steps") == 3
    assert set(prof) >= {"qkv proj", "attention", "routed experts", "shared expert / mlp", "lm head"}
    assert all(v > 0 for v in prof.values()), prof
    assert dict(fast.native_step.step.take_profile())["steps"] == 0
    sys_path = __import__("sys").path
    sys_path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[2] / "perf"))
    try:
        import bench_decode_step
    finally:
        sys_path.pop(0)
    b = bench_decode_step.phase_bytes(model)  # dense layers count their MLP, MoE layers top-k experts
    cfg = model.config
    expert = 3 * cfg.hidden_size * cfg.intermediate_size * 4
    assert b["routed experts"] == cfg.num_experts_per_tok * expert * (cfg.num_hidden_layers // 2)
    assert b["lm head"] == cfg.vocab_size * cfg.hidden_size * 4
