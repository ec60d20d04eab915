"""compressed-tensors `pack-quantized` int4 checkpoints (the published `quantized.w4a16` Llama 4 ones): read
into our int4 layout, and written from an int4 model (`amd-llama4 convert --to int4`).

Per quantised linear `X` (nn.Linear naming, W [N, K]):
  X.weight_packed      int32 [N, ceil(K/8)]: eight 4-bit values per word, column 8j+i at bits 4i..4i+3,
                       each stored as q + 8 (signed int4 with an offset, so 0..15). In little-endian bytes
                       that is exactly our uint8 [N, K/2] (column 2j low nibble, 2j+1 high).
  X.weight_scale       [N, K/G] (the model dtype)
  X.weight_zero_point  int32 [ceil(N/8), K/G], asymmetric only: signed zero points + 8, packed like the
                       weight but along the OUTPUT dim (row 8j+i at bits 4i..4i+3); symmetric = zero point 0
                       (our 8).
  X.weight_shape       int [2] = [N, K]
  X.weight_g_idx       optional (actorder "group"): accepted only when trivial (column k in group k // G).
Routed experts are per-expert linears: `...feed_forward.experts.{i}.{gate,up,down}_proj.*` (as
llm-compressor writes Llama 4), stacked here into Int4Experts' [E, 2I, H/2] / [E, H, I/2].
quantization_config: quant_method "compressed-tensors", format "pack-quantized", config_groups with
weights {num_bits 4, type int, strategy group, group_size 32/64/128, symmetric}, no input_activations,
`ignore` (modules left in high precision). Which modules are int4 is read from the tensors themselves.
"""
from __future__ import annotations

import sys

import torch

from amd_llama4.config import INT4_GROUP_SIZES, QuantConfig
from amd_llama4.errors import CheckpointError

FORMAT = "pack-quantized"


def _q(qc: dict, field: str) -> str:
    return f"config.json: quantization_config.{field}"


def is_int4(qc: dict) -> bool:
    """A compressed-tensors config whose weights are packed integers (int4 here; FP8 ones go to quant/fp8.py)."""
    if qc.get("quant_method") != "compressed-tensors":
        return False
    groups = qc.get("config_groups") or {}
    formats = {qc.get("format")} | {g.get("format") for g in groups.values() if isinstance(g, dict)}
    return FORMAT in formats or any(isinstance(g, dict) and (g.get("weights") or {}).get("type") == "int"
                                    and (g.get("weights") or {}).get("num_bits") == 4 for g in groups.values())


def parse(qc: dict) -> QuantConfig:
    """quantization_config -> QuantConfig(method='int4', ...); anything we cannot run is an error naming the field."""
    groups = qc.get("config_groups")
    if not isinstance(groups, dict) or not groups:
        raise ValueError(f"{_q(qc, 'config_groups')}: missing or empty")
    schemes = []
    for gname, g in groups.items():
        f = f"config_groups.{gname}"
        fmt = g.get("format") or qc.get("format")
        if fmt != FORMAT:
            raise ValueError(f"{_q(qc, f + '.format')}: {fmt!r} unsupported for int4 (only {FORMAT!r})")
        w = g.get("weights")
        if not isinstance(w, dict):
            raise ValueError(f"{_q(qc, f + '.weights')}: missing")
        if w.get("num_bits") != 4 or w.get("type", "int") != "int":
            raise ValueError(f"{_q(qc, f + '.weights.num_bits')}: {w.get('num_bits')!r} ({w.get('type')!r}); "
                             "only 4-bit int weights are supported")
        if w.get("strategy") != "group":
            raise ValueError(f"{_q(qc, f + '.weights.strategy')}: {w.get('strategy')!r} unsupported "
                             f"(only 'group', with group_size in {INT4_GROUP_SIZES})")
        if w.get("group_size") not in INT4_GROUP_SIZES:
            raise ValueError(f"{_q(qc, f + '.weights.group_size')}: {w.get('group_size')!r} not in {INT4_GROUP_SIZES}")
        if w.get("dynamic") not in (None, False):
            raise ValueError(f"{_q(qc, f + '.weights.dynamic')}: {w.get('dynamic')!r}; weights must be static")
        if g.get("input_activations") is not None:
            raise ValueError(f"{_q(qc, f + '.input_activations')}: set; only weight-only int4 (w4a16) is supported")
        schemes.append((w["group_size"], not w.get("symmetric", True)))
    if len(set(schemes)) > 1:
        raise ValueError(f"{_q(qc, 'config_groups')}: groups differ in group_size/symmetric {sorted(set(schemes))}; "
                         "one int4 scheme per checkpoint is supported")
    group_size, zero_point = schemes[0]
    return QuantConfig(method="int4", group_size=group_size, zero_point=zero_point, ignore=list(qc.get("ignore") or []))


def _little_endian() -> None:
    if sys.byteorder != "little":
        raise RuntimeError("int4 checkpoints: the packed int32 words are read as bytes; big-endian hosts unsupported")


def unpack_rows(packed: torch.Tensor, rows: int) -> torch.Tensor:
    """int32 [ceil(rows/8), C] packed along dim 0 (row 8j+i at bits 4i) -> uint8 [rows, C] (values 0..15)."""
    _little_endian()
    C = packed.shape[1]
    # flatten first: a transposed [1, C] is "contiguous" with a last stride of C, which view() refuses
    b = packed.t().contiguous().reshape(-1).view(torch.uint8).reshape(C, -1)  # [C, 4 * ceil(rows/8)]
    return torch.stack((b & 0xF, b >> 4), dim=-1).reshape(b.shape[0], -1)[:, :rows].t().contiguous()


def pack_rows(z: torch.Tensor) -> torch.Tensor:
    """uint8 [R, C] (0..15) -> int32 [ceil(R/8), C], packed along dim 0 (zero rows pad the last word)."""
    _little_endian()
    R, C = z.shape
    t = torch.zeros(C, -(-R // 8) * 8, dtype=torch.uint8, device=z.device)
    t[:, :R] = z.t()
    return (t[:, 0::2] | (t[:, 1::2] << 4)).contiguous().view(torch.int32).t().contiguous()


class CTReader:
    """Reads one module's int4 tensors from a CheckpointSource into our layout (see module doc)."""

    PACKED = "weight_packed"  # the packed weight's suffix: which modules the checkpoint holds as int4

    def __init__(self, qc: dict, source):
        self.source, self.quant_config = source, parse(qc)
        _little_endian()

    def _has(self, name: str) -> bool:
        return self.source._find(name) is not None

    def plan(self, model) -> dict[str, str]:
        """{module name: 'linear' | 'experts'} for the modules the checkpoint holds as int4."""
        from amd_llama4.quant.fp8 import _LINEAR_NAMES, _VISION_PREFIXES

        out = {}
        for name, mod in model.named_modules():
            if name.startswith(_VISION_PREFIXES):
                continue
            if (isinstance(mod, torch.nn.Linear) and _LINEAR_NAMES.search("." + name)
                    and self._has(f"{name}.{self.PACKED}")):
                out[name] = "linear"
            elif type(mod).__name__ == "Experts" and self._has(f"{name}.0.gate_proj.{self.PACKED}"):
                out[name] = "experts"
        return out

    def where(self, mod: str) -> str:
        src = self.source._find(f"{mod}.{self.PACKED}") or self.source._find(f"{mod}.0.gate_proj.{self.PACKED}")
        return self.source.ckpt.tensors[src].file if src else ""

    file_of = where

    def _tensor(self, name: str, shape: tuple, dtypes: tuple) -> torch.Tensor:
        src = self.source._find(name)
        if src is None:
            raise CheckpointError(f"{self.source.ckpt.folder}: missing tensor {name!r} (int4 {FORMAT})")
        info = self.source.ckpt.tensors[src]
        t = self.source._read(name)
        if tuple(t.shape) != tuple(shape) or t.dtype not in dtypes:
            raise CheckpointError(f"{info.file}: tensor {src!r} is {str(t.dtype).removeprefix('torch.')}"
                                  f"{list(t.shape)}, expected {'/'.join(str(d).removeprefix('torch.') for d in dtypes)}"
                                  f"{list(shape)}")
        return t

    def read(self, base: str, N: int, K: int) -> tuple:
        """One linear `base` (W [N, K]) -> (qweight uint8 [N, K/2], scales [N, K/G], zeros uint8 [N, K/G] | None)."""
        q = self.quant_config
        G = q.group_size
        packed = self._tensor(f"{base}.weight_packed", (N, -(-K // 8)), (torch.int32,))
        scales = self._tensor(f"{base}.weight_scale", (N, K // G), (torch.float32, torch.bfloat16, torch.float16))
        shape = self._tensor(f"{base}.weight_shape", (2,), (torch.int64, torch.int32))
        zeros = None
        if q.zero_point:
            zeros = self._tensor(f"{base}.weight_zero_point", (-(-N // 8), K // G), (torch.int32,))
        if self._has(f"{base}.weight_g_idx"):
            g_idx = self._tensor(f"{base}.weight_g_idx", (K,), (torch.int32, torch.int64))
            check_trivial_g_idx(g_idx, G, self.source, f"{base}.weight_g_idx")
        if packed.device.type == "meta":
            return (torch.empty(N, K // 2, dtype=torch.uint8, device="meta"), scales,
                    None if zeros is None else torch.empty(N, K // G, dtype=torch.uint8, device="meta"))
        if shape.tolist() != [N, K]:
            raise CheckpointError(f"{self.source.file_of(base)}: tensor '{base}.weight_shape' is {shape.tolist()}, "
                                  f"expected {[N, K]}")
        qweight = packed.contiguous().view(torch.uint8)
        return qweight, scales, None if zeros is None else unpack_rows(zeros, N)

    def linear(self, mod: str, m) -> dict:
        qw, s, z = self.read(mod, m.out_features, m.in_features)
        return {"qweight": qw, "scales": s, "zeros": z}

    def experts(self, mod: str, m) -> dict:
        E, H, inter = m.num_experts, m.hidden, m.inter
        if self._has(f"{mod}.{E}.gate_proj.{self.PACKED}"):
            raise CheckpointError(f"{self.source.file_of(f'{mod}.{E}.gate_proj.{self.PACKED}')}: "
                                  f"'{mod}.{E}.gate_proj' is beyond the model's {E} experts")
        parts: dict[str, list] = {k: [] for k in ("w13_q", "w13_s", "w13_z", "w2_q", "w2_s", "w2_z")}
        for e in range(E):  # [gate rows | up rows] stacked per expert, one expert at a time
            g, u, d = (self.read(f"{mod}.{e}.{p}", n, k) for p, n, k in
                       (("gate_proj", inter, H), ("up_proj", inter, H), ("down_proj", H, inter)))
            for i, suffix in enumerate("qsz"):
                parts[f"w13_{suffix}"].append(None if g[i] is None else torch.cat((g[i], u[i])))
                parts[f"w2_{suffix}"].append(d[i])
        return {k: None if v[0] is None else torch.stack(v) for k, v in parts.items()}


def check_trivial_g_idx(g_idx: torch.Tensor, group_size: int, source, name: str) -> None:
    """Act-order checkpoints map column k to group g_idx[k]; we run only the identity order k // G."""
    if g_idx.device.type == "meta":
        return
    want = torch.arange(g_idx.numel(), dtype=torch.int64) // group_size
    if not torch.equal(g_idx.long().cpu(), want):
        raise CheckpointError(f"{source.file_of(name)}: tensor {name!r} reorders columns (act-order / desc_act); "
                              "only the identity group order is supported")


# ---------------------------------------------------------------- writing (amd-llama4 convert --to int4)

def quantization_config(q: QuantConfig, ignore: list[str]) -> dict:
    weights = {"num_bits": 4, "type": "int", "symmetric": not q.zero_point, "strategy": "group",
               "group_size": q.group_size, "dynamic": False, "actorder": None, "block_structure": None,
               "observer": "minmax", "observer_kwargs": {}}
    return {"quant_method": "compressed-tensors", "format": FORMAT, "quantization_status": "compressed",
            "config_groups": {"group_0": {"targets": ["Linear"], "weights": weights, "input_activations": None,
                                          "output_activations": None, "format": FORMAT}},
            "ignore": ignore, "kv_cache_scheme": None, "sparsity_config": {}}


def _linear_tensors(base: str, qweight, scales, zeros, N: int, K: int, dtype) -> dict[str, torch.Tensor]:
    _little_endian()
    out = {f"{base}.weight_packed": qweight.contiguous().view(torch.int32),
           f"{base}.weight_scale": scales.to(dtype).contiguous(),
           f"{base}.weight_shape": torch.tensor([N, K], dtype=torch.int64)}
    if zeros is not None:
        out[f"{base}.weight_zero_point"] = pack_rows(zeros)
    return out


def checkpoint_tensors(model, dtype: torch.dtype = torch.bfloat16) -> tuple[dict[str, torch.Tensor], list[str]]:
    """({name: tensor} to write, the high-precision Linear modules for `ignore`) of an int4 model."""
    from amd_llama4.quant.int4 import Int4Experts, Int4Linear

    out: dict[str, torch.Tensor] = {}
    int4 = {}
    for name, m in model.named_modules():
        if isinstance(m, Int4Linear):
            int4[name] = m
            out.update(_linear_tensors(name, m.qweight, m.scales, m.zeros, m.out_features, m.in_features, dtype))
        elif isinstance(m, Int4Experts):
            int4[name] = m
            H, inter = m.hidden, m.inter
            for e in range(m.num_experts):
                z13 = None if m.w13_z is None else m.w13_z[e]
                for p, rows in (("gate_proj", slice(0, inter)), ("up_proj", slice(inter, 2 * inter))):
                    out.update(_linear_tensors(f"{name}.{e}.{p}", m.w13_q[e, rows], m.w13_s[e, rows],
                                               None if z13 is None else z13[rows], inter, H, dtype))
                out.update(_linear_tensors(f"{name}.{e}.down_proj", m.w2_q[e], m.w2_s[e],
                                           None if m.w2_z is None else m.w2_z[e], H, inter, dtype))
    tied = model.config.tie_word_embeddings
    for name, p in model.named_parameters():
        if name.rpartition(".")[0] in int4 or (tied and name == "lm_head.weight"):
            continue
        out[name] = p.detach().to(dtype).contiguous()
    ignore = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    return out, ignore
