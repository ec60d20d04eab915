"""A tiny Llama 4 briefly trained on real text, for accuracy tests (a helper module, not a test file).

Random tiny models are near-tied at almost every position (mean top1-top2 logit gap ~0.3 logit std),
so FP8 rounding flips many argmaxes there; a model trained on text is confident where text is
predictable, as real LMs are. Training text: docstrings of a fixed list of stdlib modules (offline,
the same on every machine with the same Python minor version); held-out text: other modules'.

The model is tiny-scout with Scout's own head_dim, 128 (the preset has 32): the KV cache is scaled per
token and KV head, so head_dim is the size of each scale group and the length of every q.k product. With
32 the same rounding costs 2-3x the KL and ~1.4x the flips (figures in test_accuracy_trained.py).
Training costs ~1.7x the preset's: ~36 s on 2 idle cores instead of ~21 s (119 vs 69 ms per step).

Deterministic for a given seed and thread count: fixed init (init_random), fixed batch order from a
seeded generator. Training runs the torch reference ops (the native ones have no autograd) with a
dense, differentiable expert computation patched onto each Experts instance; the trained weights are
then loaded into a fresh model that runs the ordinary inference path.

`python -m tests.quant.tiny_trained [seeds]` trains and prints the figures quoted in the tests.
"""
from __future__ import annotations

import importlib
import inspect
import math
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from amd_llama4.config import Llama4Config, preset
from amd_llama4.engine.tokenizer import Tokenizer
from amd_llama4.model.loader import build_model

# Disjoint module lists: the model never sees the held-out docstrings.
TRAIN_MODULES = (
    "argparse", "base64", "bisect", "calendar", "collections", "contextlib", "csv", "dataclasses",
    "datetime", "difflib", "enum", "fractions", "functools", "heapq", "inspect", "json", "logging",
    "pathlib", "pprint", "queue", "random", "re", "shlex", "statistics", "string", "textwrap",
    "threading", "typing", "unittest", "uuid", "zipfile",
)
HELD_OUT_MODULES = ("os", "shutil", "tempfile", "subprocess", "itertools", "operator", "copy", "decimal")
BOS = 1


def config() -> Llama4Config:
    return preset("tiny-scout", head_dim=128)


@dataclass(frozen=True)
class TrainSpec:
    steps: int = 300
    batch: int = 8
    seq: int = 128  # positions per sequence: bos + 127 tokens (as documents and the evaluation start)
    lr: float = 3e-3
    warmup: int = 20
    weight_decay: float = 0.01


def module_text(names: tuple[str, ...]) -> str:
    """Docstrings of the modules and their public attributes, in a fixed order."""
    docs = []
    for name in names:
        mod = importlib.import_module(name)
        docs.append(inspect.getdoc(mod) or "")
        for attr in sorted(dir(mod)):
            if not attr.startswith("_"):
                doc = inspect.getdoc(getattr(mod, attr, None))
                if doc and doc not in docs:
                    docs.append(doc)
    return "\n\n".join(d for d in docs if d)


def token_stream(names: tuple[str, ...]) -> torch.Tensor:
    tok = Tokenizer.from_pretrained("tiny-scout")
    return torch.tensor(tok.encode(module_text(names), add_bos=False), dtype=torch.long)


def _experts_autograd(m, x, topk_weights, topk_ids):
    """The routed experts as ops.fused_moe computes them (weight on the input, only selected experts
    run), out of place so autograd can differentiate it (the reference writes into `out=` buffers).
    x: [T, H]; topk_weights, topk_ids: [T, k] -> [T, H]."""
    out = torch.zeros_like(x)
    inter = m.down_proj.shape[1]
    for e in topk_ids.unique().tolist():
        tok, slot = (topk_ids == e).nonzero(as_tuple=True)
        xin = x.index_select(0, tok) * topk_weights[tok, slot, None].to(x.dtype)  # [n, H]
        gate_up = xin @ m.gate_up_proj[e]  # [n, 2I]
        out = out.index_add(0, tok, (F.silu(gate_up[:, :inter]) * gate_up[:, inter:]) @ m.down_proj[e])
    return out


@contextmanager
def _torch_backend_with_autograd(model):
    """Torch reference ops (differentiable) and a differentiable expert computation; undone on exit."""
    old = os.environ.get("AMD_LLAMA4_BACKEND")
    os.environ["AMD_LLAMA4_BACKEND"] = "torch"
    patched = []
    for mod in model.modules():
        if type(mod).__name__ == "Experts":
            mod.forward = (lambda m: lambda x, w, ids: _experts_autograd(m, x, w, ids))(mod)
            patched.append(mod)
    try:
        yield
    finally:
        for mod in patched:
            del mod.forward
        if old is None:
            os.environ.pop("AMD_LLAMA4_BACKEND", None)
        else:
            os.environ["AMD_LLAMA4_BACKEND"] = old


def _lr(step: int, spec: TrainSpec) -> float:
    if step < spec.warmup:
        return spec.lr * (step + 1) / spec.warmup
    t = (step - spec.warmup) / max(1, spec.steps - spec.warmup)
    return spec.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))  # cosine to 10%


def fit(model: torch.nn.Module, spec: TrainSpec, next_batch, log=None) -> list[float]:
    """Next-token training of `model` for spec.steps batches (next_batch() -> [B, seq + 1]): AdamW with
    weight decay on matrices only, cosine LR, clipped gradients, through the torch reference ops.
    log(step, losses) is called after each step. -> the per-step losses."""
    model.train()
    params = [p for p in model.parameters()]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": spec.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=spec.lr, betas=(0.9, 0.95))
    losses = []
    with _torch_backend_with_autograd(model):
        for step in range(spec.steps):
            for group in opt.param_groups:
                group["lr"] = _lr(step, spec)
            chunk = next_batch()  # [B, seq + 1]
            logits = model.compute_logits(model.hidden_states(chunk[:, :-1]))  # [B, seq, V]
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), chunk[:, 1:].reshape(-1))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            losses.append(loss.item())
            if log is not None:
                log(step, losses)
    return losses


def train(seed: int, data: torch.Tensor, spec: TrainSpec = TrainSpec()):
    """-> (state_dict of the trained fp32 model, info dict: seconds, final train loss)."""
    torch.manual_seed(seed)
    model = build_model(config()).init_random(seed)
    g = torch.Generator().manual_seed(1000 + seed)
    span = spec.seq  # tokens drawn per sequence: bos is prepended, the last one is only a target

    def next_batch() -> torch.Tensor:
        starts = torch.randint(0, data.numel() - span, (spec.batch,), generator=g)
        return torch.stack([F.pad(data[s:s + span], (1, 0), value=BOS) for s in starts.tolist()])

    t0 = time.perf_counter()
    losses = fit(model, spec, next_batch)
    seconds = time.perf_counter() - t0
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return state, {"seconds": seconds, "train_loss": sum(losses[-20:]) / len(losses[-20:])}


def load_trained(state: dict) -> torch.nn.Module:
    """A fresh inference model (eval mode, default backends) holding the trained weights."""
    model = build_model(config())
    model.load_state_dict(state, strict=True)
    return model.eval()


# Evaluation: SEQS held-out sequences of SEQ_LEN positions, each bos then the next SEQ_LEN - 1 held-out
# tokens (several sequences cost less than one as long: every step reads the whole cached context).
SEQS, SEQ_LEN = 4, 2048
STEP = 32  # tokens per step: one attention chunk


def held_out_sequences(held_out: torch.Tensor, seqs: int = SEQS, seq_len: int = SEQ_LEN) -> list[list[int]]:
    n = seq_len - 1
    return [[BOS] + held_out[i * n:(i + 1) * n].tolist() for i in range(seqs)]


def logits(model, sequences: list[list[int]], **kw) -> torch.Tensor:
    """Teacher-forced logits of every position of every sequence, concatenated: [sum of lengths, V]."""
    from amd_llama4.tools.quant_accuracy import teacher_forced_logits

    return torch.cat([teacher_forced_logits(model, ids, tokens_per_step=STEP, **kw) for ids in sequences])


def next_token_loss(ref: torch.Tensor, sequences: list[list[int]]) -> float:
    """Mean cross entropy (nats) of the next held-out token, from logits(model, sequences)."""
    rows = torch.cat([torch.arange(len(ids) - 1) + sum(map(len, sequences[:i])) for i, ids in enumerate(sequences)])
    return F.cross_entropy(ref[rows], torch.tensor([t for ids in sequences for t in ids[1:]])).item()


def main(seeds: list[int]) -> None:
    """Print, per training seed and fp8 format, the figures the tests assert on."""
    from amd_llama4.config import QuantConfig
    from amd_llama4.tools.quant_accuracy import agreement_and_kl
    from amd_llama4.quant.fp8 import quantize_model

    train_ids, sequences = token_stream(TRAIN_MODULES), held_out_sequences(token_stream(HELD_OUT_MODULES))
    for seed in seeds:
        state, info = train(seed, train_ids)
        model = load_trained(state)
        ref = logits(model, sequences)
        top1 = ref.softmax(-1).amax(-1).mean().item()
        print(f"seed {seed}: train {info['seconds']:.1f} s, held-out loss {next_token_loss(ref, sequences):.3f}, "
              f"mean top-1 prob {top1:.3f}")
        for fmt in ("e4m3fn", "e4m3fnuz"):
            kv = agreement_and_kl(ref, logits(model, sequences, kv_cache_dtype="fp8", fmt=fmt))
            q = quantize_model(load_trained(state), QuantConfig(method="fp8", fp8_format=fmt))
            wa = agreement_and_kl(ref, logits(q, sequences))
            print(f"  {fmt:8s} KV alone: agreement {kv[0]:.4f} KL {kv[1]:.1e}; "
                  f"weights + activations: agreement {wa[0]:.4f} KL {wa[1]:.1e}")


if __name__ == "__main__":
    import sys

    main([int(a) for a in sys.argv[1:]] or [0, 1, 2])
