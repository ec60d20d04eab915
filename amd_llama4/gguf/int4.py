"""Q4_0 GGUF weights kept as our int4 (w4a16) layout, bit for bit, instead of dequantised.

llama.cpp's Q4_0 block is 32 values of one row: an f16 scale d, then 16 bytes where byte j holds
value j in its low nibble and value j + 16 in its high nibble; W = (q - 8) * d. That is our int4
layout (amd_llama4/ops/int4.py) with group size 32 and symmetric zero point 8; only the nibble order
differs (ours: value 2j low, 2j + 1 high). Used with `quantization="int4"` on a GGUF: every linear and
expert tensor stored as Q4_0 runs on the int4 kernels; the rest is dequantised as usual.
"""
from __future__ import annotations

import numpy as np
import torch

from amd_llama4.config import QuantConfig
from amd_llama4.gguf import names
from amd_llama4.gguf.reader import GGUFError

GROUP = 32  # values per Q4_0 block
_BLOCK_BYTES = 2 + GROUP // 2


def q4_0_to_int4(raw: np.ndarray, n: int, k: int, where: str = "") -> tuple[torch.Tensor, torch.Tensor]:
    """Q4_0 bytes of a [n, k] weight ([n, k/32 * 18] uint8) -> (qweight uint8 [n, k/2], scales fp32 [n, k/32]),
    symmetric (zero point 8)."""
    a = np.asarray(raw, dtype=np.uint8)
    if k % GROUP or a.shape != (n, k // GROUP * _BLOCK_BYTES):
        raise GGUFError(f"{where}: Q4_0 data {list(a.shape)} does not hold a [{n}, {k}] weight")
    blocks = a.reshape(n, k // GROUP, _BLOCK_BYTES)
    scales = blocks[..., :2].copy().view(np.float16)[..., 0].astype(np.float32)
    qs = blocks[..., 2:]
    vals = np.concatenate([qs & 0x0F, qs >> 4], axis=-1).reshape(n, k)  # values 0..31 of each block, in order
    qweight = vals[:, 0::2] | (vals[:, 1::2] << 4)
    return torch.from_numpy(np.ascontiguousarray(qweight)), torch.from_numpy(scales)


class GGUFInt4Reader:
    """Hands out our int4 modules' tensors from a GGUFSource's Q4_0 tensors (the interface of
    quant/int4.py's checkpoint readers: quant_config, plan, linear, experts, where, file_of)."""

    quant_config = QuantConfig(method="int4", group_size=GROUP, zero_point=False)

    def __init__(self, source):
        self.source = source

    def _q4(self, gname: str) -> bool:
        t = self.source.tensors.get(gname)
        return t is not None and t.tensor_type.name == "Q4_0"

    def plan(self, model) -> dict[str, str]:
        """{module: 'linear' | 'experts'} for the modules whose GGUF tensors are all Q4_0."""
        from amd_llama4.quant.fp8 import _LINEAR_NAMES

        out = {}
        for name, mod in model.named_modules():
            if isinstance(mod, torch.nn.Linear) and _LINEAR_NAMES.search("." + name) and mod.bias is None:
                if self._q4(names.gguf_names(name + ".weight")[0]):
                    out[name] = "linear"
            elif type(mod).__name__ == "Experts":
                g = (*names.gguf_names(name + ".gate_up_proj"), *names.gguf_names(name + ".down_proj"))
                if all(self._q4(x) for x in g):
                    out[name] = "experts"
        return out

    def where(self, mod: str) -> str:
        return self.source.path

    file_of = where

    def _read(self, gname: str, shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        """A Q4_0 tensor of torch shape `shape` ([.., n, k]) -> (qweight [.., n, k/2], scales [.., n, k/32])."""
        t = self.source.tensors[gname]
        self.source.used.add(gname)
        got = tuple(int(d) for d in reversed(t.shape.tolist()))
        if got != shape:
            raise GGUFError(f"{self.source.path}: tensor {gname!r} has shape {list(got)}, expected {list(shape)}")
        *lead, n, k = shape
        if self.source.meta:
            return (torch.empty(*lead, n, k // 2, dtype=torch.uint8, device="meta"),
                    torch.empty(*lead, n, k // GROUP, device="meta"))
        rows = int(np.prod(lead, dtype=np.int64)) * n
        qw, s = q4_0_to_int4(np.asarray(t.data).reshape(rows, -1), rows, k, f"{self.source.path}: {gname!r}")
        return qw.reshape(*lead, n, k // 2), s.reshape(*lead, n, k // GROUP)

    def linear(self, mod: str, m) -> dict:
        qw, s = self._read(names.gguf_names(mod + ".weight")[0], (m.out_features, m.in_features))
        return {"qweight": qw, "scales": s, "zeros": None}

    def experts(self, mod: str, m) -> dict:
        E, H, inter = m.num_experts, m.hidden, m.inter
        gate, up = names.gguf_names(mod + ".gate_up_proj")
        gq, gs = self._read(gate, (E, inter, H))
        uq, us = self._read(up, (E, inter, H))
        dq, ds = self._read(names.gguf_names(mod + ".down_proj")[0], (E, H, inter))
        return {"w13_q": torch.cat([gq, uq], 1), "w13_s": torch.cat([gs, us], 1), "w13_z": None,
                "w2_q": dq, "w2_s": ds, "w2_z": None}
