"""Where each model parameter comes from in a checkpoint, in every layout the released models use.

Accepted: one file or shards; text names with or without `language_model.` (multimodal releases)
or nested as `model.language_model.*`; the vision tower's `vision_model.*` / `multi_modal_projector.*`
flat (HF's Llama4ForConditionalGeneration) or nested under `model.`;
fused experts (`experts.gate_up_proj` [E, H, 2I], `experts.down_proj` [E, I, H]) or one tensor per
expert (`experts.{i}.{gate,up,down}_proj.weight`, nn.Linear [out, in]); FP8 scales as this project
writes them, as HF fine-grained FP8 names them (`weight_scale_inv`) and in Meta's `fbgemm_fp8`
layout (quant/fbgemm.py). Sources hand out host tensors (or, on the meta device, empty tensors
with the header's shape and dtype: nothing is read); the loader moves them to the device.
"""
from __future__ import annotations

import re
from typing import Callable

import torch

from amd_llama4.model.safetensors_io import Checkpoint, CheckpointError
from amd_llama4.platform import FP8_DTYPES
from amd_llama4.quant import fbgemm

_PREFIXES = ("", "language_model.")
# The vision side of multimodal checkpoints: read into a multimodal model, legitimately unused by a
# text-only one (a multimodal checkpoint loaded as text, or one with a stub vision_config).
_OTHER_MODALITIES = ("vision_model.", "multi_modal_projector.", "model.vision_model.", "model.multi_modal_projector.")
# A tensor every checkpoint with a vision tower holds.
VISION_PROBE = "vision_model.patch_embedding.linear.weight"
_FUSED = re.compile(r"(.*\.feed_forward\.experts)\.(gate_up_proj|down_proj)(_scale)?$")
# FP8 KV-cache scales some checkpoints carry (per tensor or per KV head).
_KV_SCALE = re.compile(r"model\.layers\.(\d+)\.self_attn\.(?:attn\.)?([kv])_scale$")


def _candidates(name: str) -> tuple[str, ...]:
    """Checkpoint names that may hold the model parameter `name`, most common layout first."""
    if name.startswith(("vision_model.", "multi_modal_projector.")):
        return name, "model." + name
    nested = ("model.language_model." + name[len("model."):],) if name.startswith("model.") else ()
    return (*(p + name for p in _PREFIXES), *nested)


def _text_name(ckpt_name: str) -> str:
    """A text tensor's checkpoint name as the model names it."""
    if ckpt_name.startswith("model.language_model."):
        return "model." + ckpt_name[len("model.language_model."):]
    return ckpt_name.removeprefix("language_model.")


def _bytes_op(fn, tensors: list[torch.Tensor]) -> torch.Tensor:
    """cat/stack/transpose for float8 too (no CPU kernels for them): operate on the raw bytes."""
    if tensors[0].dtype in FP8_DTYPES:
        return fn([t.view(torch.uint8) for t in tensors]).view(tensors[0].dtype)
    return fn(tensors)


class CheckpointSource:
    """Finds the checkpoint tensor(s) for one model parameter name and reads them (`meta`: header only)."""

    def __init__(self, ckpt: Checkpoint, meta: bool = False, text_only: bool = True):
        """text_only: the model has no vision tower, so the checkpoint's vision tensors go unused."""
        self.ckpt, self.meta, self.text_only = ckpt, meta, text_only
        self.used: set[str] = set()

    def has_vision(self) -> bool:
        return self._find(VISION_PROBE) is not None

    def _find(self, name: str) -> str | None:
        for c in _candidates(name):
            for n in (c, c + "_inv") if c.endswith(".weight_scale") else (c,):
                if n in self.ckpt:  # HF fine-grained FP8 calls block scales `weight_scale_inv`
                    return n
        return None

    def where(self, name: str) -> str:
        """Which file a parameter comes from (for grouping the loading by shard)."""
        src = self._find(name) or self._find(self._per_expert_names(name)[0][0] if _FUSED.match(name) else name)
        return self.ckpt.tensors[src].file if src else ""

    def file_of(self, name: str) -> str:
        src = self._find(name) or (self._find(self._per_expert_names(name)[0][0]) if _FUSED.match(name) else None)
        return self.ckpt.tensors[src].file if src else self.ckpt.folder

    def _per_expert_names(self, name: str) -> list[list[str]]:
        base, kind, scale = _FUSED.match(name).groups()
        parts = ("gate_proj", "up_proj") if kind == "gate_up_proj" else ("down_proj",)
        suffix = "weight_scale" if scale else "weight"
        out, i = [], 0
        while self._find(f"{base}.{i}.{parts[0]}.{suffix}"):
            out.append([f"{base}.{i}.{p}.{suffix}" for p in parts])
            i += 1
        return out or [[f"{base}.0.{p}.{suffix}" for p in parts]]

    def _read(self, name: str) -> torch.Tensor:
        src = self._find(name)
        self.used.add(src)
        return self.ckpt.meta(src) if self.meta else self.ckpt.get(src)

    def _wrong_shape(self, src: str, shape, expect) -> CheckpointError:
        file = self.ckpt.tensors[src].file if src in self.ckpt.tensors else self.ckpt.folder
        return CheckpointError(f"{file}: tensor {src!r} has shape {list(shape)}, expected {list(expect)}")

    def load(self, name: str, expect: torch.Size, shard: Callable | None = None) -> torch.Tensor:
        """The full tensor `name` of shape `expect` (host, or meta), or only this rank's part (`shard`)."""
        src = self._find(name)
        if src is not None:
            stored = self.ckpt.tensors[src].shape
            if not fbgemm.same_or_fbgemm_shape(name, stored, tuple(expect)):
                raise self._wrong_shape(src, stored, expect)
            if shard is not None and stored == tuple(expect) and not self.meta:  # read only the slice, lazily
                self.used.add(src)
                return shard(self.ckpt.slice(src))
            t = fbgemm.to_model_layout(name, self._read(src), tuple(expect))
        elif _FUSED.match(name) and self._find(self._per_expert_names(name)[0][0]) is not None:
            groups = self._per_expert_names(name)
            # per-expert [out, in] -> fused input-major: gate_up [E, H, 2I], down [E, I, H]
            # (per-channel scales [out, 1] -> [E, 1, out] by the same transform)
            t = _bytes_op(torch.stack, [_bytes_op(lambda ts: torch.cat(ts, dim=1),
                                                  [_bytes_op(lambda ts: ts[0].t(), [self._read(n)]) for n in g])
                                        for g in groups])
            if t.shape != expect:
                raise self._wrong_shape(f"{groups[0][0]} .. {groups[-1][-1]}", t.shape, expect)
        else:
            others = ", ".join(repr(c) for c in _candidates(name)[1:])
            raise CheckpointError(f"{self.ckpt.folder}: missing tensor {name!r} (also looked for {others}"
                                  f"{' and per-expert names' if _FUSED.match(name) else ''})")
        return shard(t) if shard is not None else t

    def kv_scales(self) -> dict[int, dict[str, torch.Tensor]]:
        out: dict[int, dict[str, torch.Tensor]] = {}
        for n in self.ckpt.tensors:
            m = _KV_SCALE.fullmatch(_text_name(n))
            if m:
                self.used.add(n)
                t = self.ckpt.meta(n) if self.meta else self.ckpt.get(n)
                out.setdefault(int(m.group(1)), {})[m.group(2)] = t.float().reshape(-1)
        return out

    def unexpected(self) -> list[str]:
        return sorted(n for n in self.ckpt.tensors
                      if n not in self.used and not (self.text_only and n.startswith(_OTHER_MODALITIES)))

    def close(self) -> None:
        self.ckpt.close()
