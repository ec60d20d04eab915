"""Safetensors files and shard indexes, validated before anything is mapped (never pickle).

A checkpoint is a set of tensors spread over files; `Checkpoint` maps each name to its file,
checks every header (size, offsets, dtypes) up front, and reads tensors memory-mapped.
"""
from __future__ import annotations

import json
import os
import struct
import sys
from dataclasses import dataclass

import torch
from safetensors import safe_open
from amd_llama4.errors import CheckpointError  # noqa: F401 - re-exported (its old home)

MAX_HEADER_BYTES = 100 * 1024 * 1024  # the safetensors format's own limit

_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
                "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E4M3FNUZ": 1, "F8_E5M2FNUZ": 1, "U16": 2,
                "U32": 4, "U64": 8}
# Header dtype -> torch dtype, for the tensors a model can hold (used to build header-only meta tensors).
TORCH_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
                "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
                "F8_E4M3FNUZ": torch.float8_e4m3fnuz, "F8_E5M2FNUZ": torch.float8_e5m2fnuz}


@dataclass(frozen=True)
class TensorInfo:
    file: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        n = _DTYPE_BYTES[self.dtype]
        for d in self.shape:
            n *= d
        return n


def read_header(path: str) -> dict[str, TensorInfo]:
    """Validate a .safetensors file's header against its size; return name -> TensorInfo."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise CheckpointError(f"{path}: truncated file ({size} bytes; no safetensors header)")
            (n,) = struct.unpack("<Q", head)
            if n > MAX_HEADER_BYTES:
                raise CheckpointError(f"{path}: header length {n} bytes exceeds {MAX_HEADER_BYTES} "
                                      "(corrupt or not a safetensors file)")
            if 8 + n > size:
                raise CheckpointError(f"{path}: truncated file: header says {n} bytes, file has {size - 8}")
            raw = f.read(n)
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read ({e.strerror})") from None
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: header is not valid JSON ({e})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: header is not a JSON object")
    header.pop("__metadata__", None)
    data_bytes = size - 8 - n
    out = {}
    for name, meta in header.items():
        try:
            dtype, shape, (start, end) = meta["dtype"], tuple(meta["shape"]), meta["data_offsets"]
        except (TypeError, KeyError, ValueError):
            raise CheckpointError(f"{path}: tensor {name!r} has a malformed header entry") from None
        if dtype not in _DTYPE_BYTES:
            raise CheckpointError(f"{path}: tensor {name!r} has unsupported dtype {dtype!r}")
        numel = 1
        for d in shape:
            numel *= d
        if end - start != numel * _DTYPE_BYTES[dtype] or start < 0:
            raise CheckpointError(f"{path}: tensor {name!r} {dtype}{list(shape)} has data_offsets "
                                  f"[{start}, {end}] that do not match its size")
        if end > data_bytes:
            raise CheckpointError(f"{path}: truncated file: tensor {name!r} ends at byte {end} "
                                  f"of a {data_bytes}-byte data section")
        out[name] = TensorInfo(path, dtype, shape)
    return out


class Checkpoint:
    """All tensors of a checkpoint folder (one file, or shards listed by model.safetensors.index.json)."""

    def __init__(self, folder: str):
        self.folder = folder
        index = os.path.join(folder, "model.safetensors.index.json")
        if os.path.exists(index):
            try:
                with open(index) as f:
                    weight_map = json.load(f)["weight_map"]
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise CheckpointError(f"{index}: malformed shard index ({e})") from None
            files = sorted(set(weight_map.values()))
        else:
            files = sorted(f for f in os.listdir(folder) if f.endswith(".safetensors"))
            weight_map = None
        if not files:
            raise CheckpointError(f"{folder}: no .safetensors files (only safetensors checkpoints are read)")
        self.tensors: dict[str, TensorInfo] = {}
        for name in files:
            path = os.path.join(folder, name)
            if not os.path.exists(path):
                raise CheckpointError(f"{index}: lists shard {name!r}, which does not exist")
            for t, info in read_header(path).items():
                if t in self.tensors:
                    raise CheckpointError(f"{path}: tensor {t!r} also in {self.tensors[t].file}")
                if weight_map is not None and weight_map.get(t) != name:
                    raise CheckpointError(f"{path}: tensor {t!r} is not mapped to this file by {index}")
                self.tensors[t] = info
        if weight_map is not None:
            missing = [t for t in weight_map if t not in self.tensors]
            if missing:
                raise CheckpointError(f"{index}: tensor {missing[0]!r} is mapped to {weight_map[missing[0]]!r} "
                                      f"but not found there ({len(missing)} missing)")
        self._handles: dict[str, object] = {}

    def __contains__(self, name: str) -> bool:
        return name in self.tensors

    def _handle(self, file: str):
        if file not in self._handles:
            self._handles[file] = safe_open(file, framework="pt")
        return self._handles[file]

    def slice(self, name: str):
        """A lazy view (`[...]` indexing reads only that part); for per-rank loading."""
        return self._handle(self.tensors[name].file).get_slice(name)

    def meta(self, name: str) -> torch.Tensor:
        """An empty meta-device tensor with the header's shape and dtype: checks without reading data."""
        info = self.tensors[name]
        if info.dtype not in TORCH_DTYPES:
            raise CheckpointError(f"{info.file}: tensor {name!r} has dtype {info.dtype}, which torch cannot hold")
        return torch.empty(info.shape, dtype=TORCH_DTYPES[info.dtype], device="meta")

    def get(self, name: str) -> torch.Tensor:
        info = self.tensors[name]
        try:
            return self._handle(info.file).get_tensor(name)
        except Exception as e:  # noqa: BLE001 - re-raised with the file and tensor named
            raise CheckpointError(f"{info.file}: cannot read tensor {name!r}: {e}") from None

    def close(self) -> None:
        self._handles.clear()


def shard_bar(total: int, enabled: bool, desc: str):
    """A progress bar over shards (on stderr); a silent one when not enabled."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="shard", file=sys.stderr, disable=not enabled)
