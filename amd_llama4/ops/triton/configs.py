"""Kernel tile configs: dataclass defaults per arch family, tuned values as JSON data.

Tuned files live in amd_llama4/tuned/, one per (op, device, shape):
  {op}-{device_key}-{shape_key}.json, e.g. fused_moe-AMD_Instinct_MI300X-E16-N1024-bf16.json
  {"op", "device", "shape": {...}, "source": "measured" | "untuned-seed", "configs": {"<M>": {...}}}
Lookup takes the entry whose M is nearest to the call's M; with no file the arch default is used.
"""
from __future__ import annotations

import functools
import json
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

TUNED_DIR = Path(__file__).resolve().parents[2] / "tuned"


@dataclass(frozen=True)
class TileConfig:
    BLOCK_M: int = 64
    BLOCK_N: int = 64
    BLOCK_K: int = 64
    GROUP_M: int = 8
    num_warps: int = 4
    num_stages: int = 2
    waves_per_eu: int = 2  # AMD only: occupancy hint (waves per SIMD)
    matrix_instr_nonkdim: int = 16  # AMD only: 16x16 MFMA
    kpack: int = 1  # AMD only (gfx942)

    def meta(self) -> dict:
        return {"BLOCK_M": self.BLOCK_M, "BLOCK_N": self.BLOCK_N, "BLOCK_K": self.BLOCK_K, "GROUP_M": self.GROUP_M}

    def label(self) -> str:
        return (f"M{self.BLOCK_M}N{self.BLOCK_N}K{self.BLOCK_K}G{self.GROUP_M}"
                f"w{self.num_warps}s{self.num_stages}e{self.waves_per_eu}")

    @classmethod
    def from_dict(cls, d: dict) -> "TileConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"TileConfig: unknown keys {sorted(unknown)}")
        return cls(**d)

    def to_dict(self) -> dict:
        return asdict(self)


def family(arch: str | None) -> str:
    return "amd" if arch and arch.startswith("gfx") else "nvidia"


# Defaults chosen for >= 2 waves/SIMD on gfx942 without spills (checked by tests/tools/test_isa.py).
_DEFAULTS = {
    ("fused_moe", "amd"): TileConfig(64, 64, 64, 8, 4, 2, 2),
    ("fused_moe", "nvidia"): TileConfig(64, 64, 64, 8, 4, 3, 0),
    ("fp8_gemm", "amd"): TileConfig(64, 128, 128, 8, 4, 2, 2),
    ("fp8_gemm", "nvidia"): TileConfig(64, 128, 128, 8, 4, 3, 0),
    ("attention", "amd"): TileConfig(64, 32, 0, 1, 4, 1, 2),  # BLOCK_N 64 spills SGPRs on gfx942
    ("attention", "nvidia"): TileConfig(64, 64, 0, 1, 4, 2, 0),
    ("paged_decode", "amd"): TileConfig(16, 32, 0, 1, 4, 1, 0),
    ("paged_decode", "nvidia"): TileConfig(16, 32, 0, 1, 4, 2, 0),
    ("paged_prefill", "amd"): TileConfig(64, 32, 0, 1, 4, 1, 2),  # the prefill attention's tiles
    ("paged_prefill", "nvidia"): TileConfig(64, 64, 0, 1, 4, 2, 0),
}


def default_config(op: str, arch: str | None) -> TileConfig:
    return _DEFAULTS[(op, family(arch))]


def shape_key(shape: dict) -> str:
    return "-".join(f"{k}{v}" if k != "dtype" else str(v) for k, v in shape.items())


def file_name(op: str, device: str, shape: dict) -> str:
    return f"{op}-{device}-{shape_key(shape)}.json"


@functools.lru_cache(maxsize=256)
def _load(path: str) -> dict | None:
    p = Path(path)
    if not p.is_file():
        return None
    data = json.loads(p.read_text())
    data["_parsed"] = {int(m): TileConfig.from_dict(c) for m, c in data["configs"].items()}
    return data


def tuned_table(op: str, device: str, shape: dict, tuned_dir: Path = TUNED_DIR) -> dict | None:
    return _load(str(Path(tuned_dir) / file_name(op, device, shape)))


def get_config(op: str, device: str, shape: dict, m: int, arch: str | None,
               tuned_dir: Path = TUNED_DIR) -> tuple[TileConfig, str]:
    """-> (config, source): source is the file's "source" field, or "default"."""
    table = tuned_table(op, device, shape, tuned_dir)
    if table is None:
        return default_config(op, arch), "default"
    best = min(table["_parsed"], key=lambda k: (abs(k - m), k))
    return table["_parsed"][best], table.get("source", "unknown")


def write_table(op: str, device: str, shape: dict, configs: dict[int, TileConfig], source: str,
                tuned_dir: Path = TUNED_DIR, extra: dict | None = None) -> Path:
    path = Path(tuned_dir) / file_name(op, device, shape)
    body = {"op": op, "device": device, "shape": shape, "source": source, **(extra or {}),
            "configs": {str(m): c.to_dict() for m, c in sorted(configs.items())}}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(body, indent=1) + "\n")
    _load.cache_clear()
    return path


def all_tuned(arch_family: str | None = None, tuned_dir: Path = TUNED_DIR) -> list[dict]:
    """Every tuned file (parsed), optionally only devices of one arch family ('amd' / 'nvidia')."""
    out = []
    for p in sorted(Path(tuned_dir).glob("*.json")):
        data = _load(str(p))
        if data is None or "op" not in data:
            continue
        fam = "amd" if data["device"].startswith("AMD") else "nvidia"
        if arch_family is None or fam == arch_family:
            out.append(data)
    return out


__all__ = ["TileConfig", "default_config", "get_config", "write_table", "all_tuned", "tuned_table", "family",
           "file_name", "replace", "TUNED_DIR"]
