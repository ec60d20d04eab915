"""One decode step of the tiny model, through the engine's ModelRunner, on the GPU path's backends
(AMD_LLAMA4_BACKEND=triton: Triton launchers, in the interpreter on CPU, where they exist; torch
otherwise), issues no host sync inside the model forward. Building the step's input tensors from host
lists happens outside the checked region, as it must."""
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent / "ops"))
from triton_env import require_triton  # noqa: E402

DEV = require_triton()

from amd_llama4 import SamplingParams, load_model  # noqa: E402
from amd_llama4.engine.llm_engine import EngineArgs, LLMEngine  # noqa: E402
from tests.no_sync import no_host_sync  # noqa: E402

PROMPTS = {"a": list(range(5, 16)), "b": list(range(40, 75))}  # b's decode reads past one 32-token chunk


def _decode_logits(model, backend, monkeypatch, checked: bool):
    """Prefill both prompts, then one decode step (checked when asked) -> that step's logits [B, V]."""
    monkeypatch.setenv("AMD_LLAMA4_BACKEND", backend)
    eng = LLMEngine(EngineArgs(model="tiny-scout", device=DEV, dtype=torch.bfloat16, block_size=4,
                               num_kv_blocks=64, max_num_seqs=4), model=model)
    for rid, prompt in PROMPTS.items():
        eng.add_request(rid, prompt, SamplingParams(max_tokens=4, temperature=0, ignore_eos=True))
    while any(s.num_computed < len(PROMPTS[s.request_id]) for s in eng.scheduler.running) or \
            not eng.scheduler.running:
        eng.step()  # prefill, unchecked
    seen = []
    hidden_states, compute_logits = model.hidden_states, model.compute_logits

    def guarded(fn, record):
        def call(*args, **kwargs):
            if checked:
                with no_host_sync():
                    out = fn(*args, **kwargs)
            else:
                out = fn(*args, **kwargs)
            if record:
                seen.append((tuple(args[0].shape), out.float().clone()))
            return out
        return call

    monkeypatch.setattr(model, "hidden_states", guarded(hidden_states, False))
    monkeypatch.setattr(model, "compute_logits", guarded(compute_logits, True))
    try:
        eng.step()  # the decode step
    finally:
        monkeypatch.undo()
    assert len(seen) == 1, "the decode step must run the model once"
    return seen[0]


def test_decode_step_issues_no_host_sync(monkeypatch):
    model = load_model("tiny-scout", dtype=torch.bfloat16, device=DEV, progress=False, seed=0)  # random: small logits
    shape, got = _decode_logits(model, "triton", monkeypatch, checked=True)
    assert shape[0] == len(PROMPTS)  # one row per sequence: a decode step
    _, want = _decode_logits(model, "torch", monkeypatch, checked=False)
    torch.testing.assert_close(got, want, atol=2e-2, rtol=2e-2)


def test_a_sync_in_the_moe_launcher_is_caught(monkeypatch):
    """Control: the check is live inside the engine's decode step. The launcher's former host read of
    the padded row count (int(...) on a device tensor) must fail the step."""
    from amd_llama4.ops.triton import moe as triton_moe
    from tests.no_sync import HostSyncError

    align = triton_moe.moe_align_block_size

    def host_read_align(*args):
        out = align(*args)
        int(out[2][0])  # the old `total = int(padded.sum())`
        return out

    model = load_model("tiny-scout", dtype=torch.bfloat16, device=DEV, progress=False, seed=0)  # random: small logits
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(triton_moe, "moe_align_block_size", host_read_align)
        with pytest.raises(HostSyncError, match="_local_scalar_dense"):
            _decode_logits(model, "triton", mp, checked=True)
