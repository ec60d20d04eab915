"""Platform facts in one place: rocm | cuda | cpu, GPU arch, FP8 format, device peaks."""
from __future__ import annotations

import functools
import importlib.util
import platform as _py_platform
from dataclasses import asdict, dataclass

import torch


@dataclass(frozen=True)
class DeviceSpec:
    """Vendor figures (dense, no sparsity) used for roofline percentages and capacity planning."""

    name: str
    arch: str
    memory_gb: float
    hbm_tb_s: float
    bf16_tflops: float
    fp8_tflops: float
    fp8_format: str
    lds_kib: int
    num_cus: int


DEVICE_SPECS: dict[str, DeviceSpec] = {
    "mi300x": DeviceSpec("AMD_Instinct_MI300X", "gfx942", 192, 5.3, 1307, 2615, "e4m3fnuz", 64, 304),
    "mi325x": DeviceSpec("AMD_Instinct_MI325X", "gfx942", 256, 6.0, 1307, 2615, "e4m3fnuz", 64, 304),
    "mi355x": DeviceSpec("AMD_Instinct_MI355X", "gfx950", 288, 8.0, 2500, 5000, "e4m3fn", 160, 256),
    "h100": DeviceSpec("NVIDIA_H100", "sm_90", 80, 3.35, 989, 1979, "e4m3fn", 228, 132),
    "h200": DeviceSpec("NVIDIA_H200", "sm_90", 141, 4.8, 989, 1979, "e4m3fn", 228, 132),
}


@dataclass(frozen=True)
class FP8Format:
    """One float8 storage format: torch dtype, largest finite value, smallest normal exponent as a
    biased fp32 exponent (127 + e_min; the in-kernel round-to-grid), Triton's type name, NaN bytes."""

    name: str
    dtype: torch.dtype
    max: float
    emin_biased: int
    triton: str
    nan_bits: tuple[int, ...]


# The one table of FP8 facts; every other module derives from it.
FP8_FORMATS: dict[str, FP8Format] = {f.name: f for f in (
    FP8Format("e4m3fn", torch.float8_e4m3fn, 448.0, 121, "fp8e4nv", (0x7F, 0xFF)),
    FP8Format("e4m3fnuz", torch.float8_e4m3fnuz, 240.0, 120, "fp8e4b8", (0x80,)),
)}
FP8_DTYPES: tuple[torch.dtype, ...] = tuple(f.dtype for f in FP8_FORMATS.values())


def fp8_spec(fmt: str | torch.dtype) -> FP8Format:
    """The FP8Format of a format name ('e4m3fn', 'e4m3fnuz') or of its torch dtype."""
    for f in FP8_FORMATS.values():
        if fmt == f.name or fmt == f.dtype:
            return f
    raise ValueError(f"unknown FP8 format {fmt!r}; expected one of {sorted(FP8_FORMATS)} or their torch dtypes")


def fp8_format_for_arch(arch: str | None) -> str:
    """gfx942 (MI300/MI325) computes in e4m3fnuz; gfx950, NVIDIA and CPU emulation use OCP e4m3fn."""
    return "e4m3fnuz" if arch is not None and arch.startswith("gfx94") else "e4m3fn"


def torch_fp8_dtype(fmt: str) -> torch.dtype:
    if fmt not in FP8_FORMATS:
        raise ValueError(f"unknown FP8 format {fmt!r}; expected 'e4m3fn' or 'e4m3fnuz'")
    return FP8_FORMATS[fmt].dtype


def kind() -> str:
    """'rocm' when torch is a ROCm build with a visible GPU, 'cuda' likewise, else 'cpu'."""
    if torch.cuda.is_available():
        return "rocm" if torch.version.hip else "cuda"
    return "cpu"


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """'auto' (or None): the current GPU when torch sees one (ROCm or CUDA), else the CPU.
    Anything else is taken as a torch device spec ('cpu', 'cuda', 'cuda:1', 'meta')."""
    if device is None or (isinstance(device, str) and device == "auto"):
        return torch.device("cuda", torch.cuda.current_device()) if kind() != "cpu" else torch.device("cpu")
    try:
        return torch.device(device)
    except RuntimeError as e:
        raise ValueError(f"device {device!r}: expected 'auto', 'cpu', 'cuda[:N]' or 'meta' ({e})") from None


# dtype names accepted by --dtype / EngineArgs.dtype / load_model (the one table); "auto" is resolve_dtype's
DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
}
# dtype="auto" on CPU: fp32 is faster than bf16 here (no bf16 GEMM units on the CPUs we run on;
# measured: bf16 decode slower) and within every parity tolerance by construction
CPU_AUTO_DTYPE = torch.float32


def parse_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """An explicit dtype name ('bfloat16', 'fp32', ...) or torch.dtype -> torch.dtype; for 'auto' use
    resolve_dtype, which needs the device and the checkpoint's config."""
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return DTYPES[str(dtype).lower()]
    except KeyError:
        raise ValueError(f"dtype {dtype!r} not in {sorted(DTYPES)} "
                         "('auto' is resolved by platform.resolve_dtype(dtype, device, cfg))") from None


def resolve_dtype(dtype: str | torch.dtype | None, device: str | torch.device, cfg=None) -> torch.dtype:
    """'auto' (or None): on CPU, CPU_AUTO_DTYPE; elsewhere (GPU, meta) the checkpoint config's
    torch_dtype (bf16 for the released models), bf16 when it names none (presets).
    An explicit name or torch.dtype is returned as that dtype."""
    if dtype is not None and not (isinstance(dtype, str) and dtype.lower() == "auto"):
        return parse_dtype(dtype)
    if torch.device(device).type == "cpu":
        return CPU_AUTO_DTYPE
    name = getattr(cfg, "torch_dtype", None)
    if name is None:
        return torch.bfloat16
    try:
        return parse_dtype(name)
    except ValueError:
        raise ValueError(f"config.json torch_dtype {name!r} is not a weight dtype we run in; "
                         f"pass dtype= one of {sorted(DTYPES)}") from None


def gpu_arch(index: int = 0) -> str | None:
    """e.g. 'gfx942' on MI300X, 'sm_90' on H100/H200, None on CPU."""
    k = kind()
    if k == "rocm":
        return torch.cuda.get_device_properties(index).gcnArchName.split(":")[0]
    if k == "cuda":
        major, minor = torch.cuda.get_device_capability(index)
        return f"sm_{major}{minor}"
    return None


def gpu_name(index: int = 0) -> str | None:
    return torch.cuda.get_device_name(index) if kind() != "cpu" else None


def device_key(name: str | None = None) -> str:
    """File-name form of the device name used for tuned configs: 'AMD_Instinct_MI300X', 'NVIDIA_H200', 'cpu'."""
    name = name if name is not None else gpu_name()
    if not name:
        return "cpu"
    low = name.lower()
    for key, spec in DEVICE_SPECS.items():
        if key in low.replace(" ", "").replace("-", ""):
            return spec.name
    return name.replace(" ", "_").replace("-", "_")


def fp8_format() -> str:
    return fp8_format_for_arch(gpu_arch())


@functools.lru_cache(maxsize=None)
def has_triton() -> bool:
    return importlib.util.find_spec("triton") is not None


def info() -> dict:
    """Torch and device facts; the native extension's are ops.native.info() (ops sits above platform)."""
    k = kind()
    n = torch.cuda.device_count() if k != "cpu" else 0
    arch = gpu_arch()
    out = {
        "torch": torch.__version__,
        "platform": k,
        "hip": torch.version.hip,
        "cuda": torch.version.cuda,
        "gpu_name": gpu_name(),
        "gpu_arch": arch,
        "gpu_count": n,
        "fp8_format": fp8_format_for_arch(arch),
        "triton": has_triton(),
        "python": _py_platform.python_version(),
        "machine": _py_platform.machine(),
    }
    return out


def spec_dict(key: str) -> dict:
    return asdict(DEVICE_SPECS[key])
