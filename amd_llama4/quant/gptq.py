"""GPTQ-format int4 checkpoints (AutoGPTQ / GPTQModel / transformers' `quant_method: gptq`), read into our
int4 layout (quant/int4.py).

Per quantised linear `X` (W [N, K], group size G):
  X.qweight  int32 [K/8, N]: packed along the INPUT dim: row j holds columns 8j..8j+7, column 8j+i at
             bits 4i..4i+3, unsigned 0..15.
  X.qzeros   int32 [K/G, N/8]: packed along the OUTPUT dim the same way (output 8j+i at bits 4i).
  X.scales   fp16/bf16/fp32 [K/G, N]
  X.g_idx    int32 [K] (optional): the group of each input column; accepted only when it is k // G
             (desc_act / act-order checkpoints with a real permutation are refused).
  W[n, k] = (q[k, n] - z[k // G, n]) * scales[k // G, n]
Zero points: checkpoint_format "gptq" (v1, the default and what AutoGPTQ wrote) stores z - 1, which every
v1 kernel undoes by adding 1 (symmetric checkpoints hold 7 = 8 - 1); "gptq_v2" (GPTQModel) stores z itself.
A v1 stored 15 means z = 16, which 4 bits cannot hold: refused, naming the tensor.
quantization_config: quant_method "gptq", bits 4, group_size 32/64/128, sym, desc_act,
checkpoint_format. Routed experts as per-expert linears `experts.{i}.{gate,up,down}_proj.*`.
"""
from __future__ import annotations

import torch

from amd_llama4.config import INT4_GROUP_SIZES, QuantConfig
from amd_llama4.errors import CheckpointError
from amd_llama4.quant.compressed_tensors import CTReader, check_trivial_g_idx

_SHIFTS = torch.arange(0, 32, 4, dtype=torch.int32)  # nibble i of a word at bits 4i


def is_gptq(qc: dict) -> bool:
    return qc.get("quant_method") == "gptq"


def parse(qc: dict) -> tuple[QuantConfig, int]:
    """quantization_config -> (QuantConfig, zero-point offset: 1 for checkpoint_format 'gptq', 0 for 'gptq_v2')."""
    f = "config.json: quantization_config."
    if qc.get("bits") != 4:
        raise ValueError(f"{f}bits: {qc.get('bits')!r}; only 4-bit GPTQ is supported")
    if qc.get("group_size") not in INT4_GROUP_SIZES:
        raise ValueError(f"{f}group_size: {qc.get('group_size')!r} not in {INT4_GROUP_SIZES}")
    fmt = qc.get("checkpoint_format", "gptq")
    if fmt not in ("gptq", "gptq_v2"):
        raise ValueError(f"{f}checkpoint_format: {fmt!r} unsupported ('gptq' or 'gptq_v2')")
    if qc.get("dynamic"):
        raise ValueError(f"{f}dynamic: per-module overrides are not supported")
    sym = qc.get("sym", True)
    if not isinstance(sym, bool):
        raise ValueError(f"{f}sym: {sym!r} must be true or false")
    ignore = list(qc.get("modules_to_not_convert") or [])
    return QuantConfig(method="int4", group_size=qc["group_size"], zero_point=not sym, ignore=ignore), \
        1 if fmt == "gptq" else 0


def unpack_cols(packed: torch.Tensor) -> torch.Tensor:
    """int32 [R, C] -> uint8 [R, 8C]: word (r, c) nibble i -> column 8c + i (packed along the last dim)."""
    return ((packed[..., None] >> _SHIFTS.to(packed.device)) & 0xF).reshape(*packed.shape[:-1], -1).to(torch.uint8)


class GPTQReader(CTReader):
    """Reads one module's GPTQ tensors into our layout; `plan`/`experts` as for compressed-tensors."""

    PACKED = "qweight"

    def __init__(self, qc: dict, source):
        self.source = source
        self.quant_config, self.zero_offset = parse(qc)
        self.desc_act = bool(qc.get("desc_act"))

    def read(self, base: str, N: int, K: int) -> tuple:
        q = self.quant_config
        G = q.group_size
        if N % 8:
            raise CheckpointError(f"{self.source.ckpt.folder}: {base!r} has {N} outputs; GPTQ packs zeros by 8")
        qweight = self._tensor(f"{base}.qweight", (K // 8, N), (torch.int32,))
        qzeros = self._tensor(f"{base}.qzeros", (K // G, N // 8), (torch.int32,))
        scales = self._tensor(f"{base}.scales", (K // G, N), (torch.float16, torch.bfloat16, torch.float32))
        if self._has(f"{base}.g_idx"):
            g_idx = self._tensor(f"{base}.g_idx", (K,), (torch.int32, torch.int64))
            check_trivial_g_idx(g_idx, G, self.source, f"{base}.g_idx")
        elif self.desc_act:
            raise CheckpointError(f"{self.source.ckpt.folder}: desc_act is set but {base + '.g_idx'!r} is missing")
        if qweight.device.type == "meta":
            return (torch.empty(N, K // 2, dtype=torch.uint8, device="meta"), scales.t(),
                    None if not q.zero_point else torch.empty(N, K // G, dtype=torch.uint8, device="meta"))
        from amd_llama4.ops.int4 import pack_int4

        w = unpack_cols(qweight.t().contiguous())  # [N, K/8] words -> [N, K]: column k = 8j + i
        z = unpack_cols(qzeros).to(torch.int16) + self.zero_offset  # [K/G, N]
        if int(z.max()) > 15:
            raise CheckpointError(f"{self.source.file_of(base + '.qzeros')}: tensor '{base}.qzeros' holds a stored "
                                  "zero point 15, i.e. 16 in checkpoint_format 'gptq' (v1): not representable "
                                  "in 4 bits")
        z = z.to(torch.uint8).t().contiguous()  # [N, K/G]
        if not q.zero_point:
            if not bool((z == 8).all()):
                raise CheckpointError(f"{self.source.file_of(base + '.qzeros')}: tensor '{base}.qzeros' is not "
                                      f"the symmetric zero point 8 (sym is true in quantization_config)")
            z = None
        return pack_int4(w), scales.t().contiguous(), z
