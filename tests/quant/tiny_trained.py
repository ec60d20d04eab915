"""A tiny Llama 4 briefly trained on real text, for accuracy tests (a helper module, not a test file).

Random tiny models are near-tied at almost every position (mean top1-top2 logit gap ~0.3 logit std),
so FP8 rounding flips many argmaxes there; a model trained on text is confident where text is
predictable, as real LMs are. Training text: docstrings of a fixed list of stdlib modules (offline,
the same on every machine with the same Python minor version); held-out text: other modules'.

Deterministic for a given seed and thread count: fixed init (init_random), fixed batch order from a
seeded generator. Training runs the torch reference ops (the native ones have no autograd) with a
dense, differentiable expert computation patched onto each Experts instance; the trained weights are
then loaded into a fresh model that runs the ordinary inference path.
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

from amd_llama4.config import preset
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


@dataclass(frozen=True)
class TrainSpec:
    steps: int = 300
    batch: int = 8
    seq: int = 128
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


def train(preset_name: str, seed: int, data: torch.Tensor, spec: TrainSpec = TrainSpec()):
    """-> (state_dict of the trained fp32 model, info dict: seconds, final train loss)."""
    torch.manual_seed(seed)
    cfg = preset(preset_name)
    model = build_model(cfg).init_random(seed)
    model.train()
    params = [p for p in model.parameters()]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": spec.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=spec.lr, betas=(0.9, 0.95))
    g = torch.Generator().manual_seed(1000 + seed)
    span = spec.seq + 1
    t0, losses = time.perf_counter(), []
    with _torch_backend_with_autograd(model):
        for step in range(spec.steps):
            for group in opt.param_groups:
                group["lr"] = _lr(step, spec)
            starts = torch.randint(0, data.numel() - span, (spec.batch,), generator=g)
            chunk = torch.stack([data[s:s + span] for s in starts.tolist()])  # [B, seq + 1]
            logits = model.compute_logits(model.hidden_states(chunk[:, :-1]))  # [B, seq, V]
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), chunk[:, 1:].reshape(-1))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            losses.append(loss.item())
    seconds = time.perf_counter() - t0
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return state, {"seconds": seconds, "train_loss": sum(losses[-20:]) / len(losses[-20:])}


def load_trained(preset_name: str, state: dict) -> torch.nn.Module:
    """A fresh inference model (eval mode, default backends) holding the trained weights."""
    model = build_model(preset(preset_name))
    model.load_state_dict(state, strict=True)
    return model.eval()


@torch.no_grad()
def eval_loss(model, ids: torch.Tensor) -> float:
    """Mean next-token cross entropy (nats) over `ids` [N], one full causal forward."""
    logits = model(ids[None, :-1])[0]
    return F.cross_entropy(logits, ids[1:]).item()
