"""Builds the native extension amd_llama4._C with CMake (metadata lives in pyproject.toml).

Environment (documented in docs/native.md):
  AMD_LLAMA4_NO_NATIVE=1       pure-Python install, no extension
  AMD_LLAMA4_REQUIRE_NATIVE=1  a failed native build fails the install (default: loud warning, no _C)
  AMD_LLAMA4_BUILD_TARGET      cpu | rocm | cuda (default: rocm when a ROCm install is found, cuda when
                               nvcc and a CUDA torch are present, else cpu). The old spelling
                               AMD_LLAMA4_BACKEND is still read with these values (deprecated): at run
                               time that name picks the kernel backend (torch | native | triton).
  AMD_LLAMA4_GPU_ARCHS         e.g. "gfx942" or "gfx942;gfx950" (rocm), "90" (cuda)
  AMD_LLAMA4_WITH_CK=1         also build the Composable Kernel bindings (rocm; CK_ROOT if not in ROCm)
  AMD_LLAMA4_BUILD_JOBS        parallel compile jobs (default: CPU count)
No side effects beyond the build directory: no pip installs, no git calls.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _rocm_path() -> Path | None:
    for p in (os.environ.get("ROCM_PATH"), os.environ.get("HIP_PATH"), "/opt/rocm"):
        if p and (Path(p) / "lib" / "cmake" / "hip-lang").is_dir():
            return Path(p)
    return None


def _torch_cuda() -> bool:
    """A CUDA torch is importable (only without build isolation; isolated builds see no torch)."""
    try:
        import torch  # noqa: PLC0415
    except ImportError:
        return False
    return bool(torch.version.cuda) and not torch.version.hip


TARGETS = ("cpu", "rocm", "cuda")


def choose_backend() -> str:
    target = os.environ.get("AMD_LLAMA4_BUILD_TARGET", "").strip().lower()
    if target:
        if target not in TARGETS:
            raise ValueError(f"AMD_LLAMA4_BUILD_TARGET={target!r}: expected cpu, rocm or cuda")
        return target
    old = os.environ.get("AMD_LLAMA4_BACKEND", "").strip().lower()
    if old in TARGETS:  # other values (torch | native | triton) are the run-time setting: not ours
        print(f"amd_llama4: AMD_LLAMA4_BACKEND={old} as a build target is deprecated; "
              f"use AMD_LLAMA4_BUILD_TARGET={old} (AMD_LLAMA4_BACKEND picks the run-time kernel backend)",
              file=sys.stderr, flush=True)
        return old
    if _rocm_path() is not None:
        return "rocm"
    if shutil.which("nvcc") and _torch_cuda():
        return "cuda"
    return "cpu"


def _cmake() -> str:
    try:  # the `cmake` build requirement ships its binary inside the package
        import cmake  # noqa: PLC0415

        exe = Path(cmake.CMAKE_BIN_DIR) / "cmake"
        if exe.exists():
            return str(exe)
    except ImportError:
        pass
    exe = shutil.which("cmake")
    if exe is None:
        raise RuntimeError("cmake not found (pip install 'cmake>=3.26')")
    return exe


class CMakeExtension(Extension):
    def __init__(self, name: str):
        super().__init__(name, sources=[])


class CMakeBuild(build_ext):
    def build_extensions(self):
        built = []
        for ext in self.extensions:
            try:
                self.build_extension(ext)
                built.append(ext)
            except Exception as exc:  # noqa: BLE001 - any failure: warn or, if required, re-raise
                if _env_flag("AMD_LLAMA4_REQUIRE_NATIVE"):
                    raise
                bar = "!" * 78
                print(f"\n{bar}\nWARNING: building the native extension {ext.name} FAILED:\n  {exc}\n"
                      "amd_llama4 installs WITHOUT it: ops fall back to Triton/torch (slower).\n"
                      "Set AMD_LLAMA4_REQUIRE_NATIVE=1 to make this an error.\n"
                      f"{bar}\n", file=sys.stderr, flush=True)
        # Only what was built is copied in place (editable installs) and packed into the wheel.
        self.extensions[:] = built

    def build_extension(self, ext: CMakeExtension):
        import pybind11  # noqa: PLC0415 - a build requirement

        out_dir = Path(self.get_ext_fullpath(ext.name)).resolve().parent
        build_dir = Path(self.build_temp).resolve() / ext.name
        build_dir.mkdir(parents=True, exist_ok=True)
        backend = choose_backend()
        args = [
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={out_dir}",
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY_RELEASE={out_dir}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
            "-DCMAKE_BUILD_TYPE=Release",
            f"-DAMD_LLAMA4_BUILD_TARGET={backend}",
        ]
        if os.environ.get("AMD_LLAMA4_GPU_ARCHS"):
            args.append(f"-DAMD_LLAMA4_GPU_ARCHS={os.environ['AMD_LLAMA4_GPU_ARCHS']}")
        if backend == "rocm":
            rocm = _rocm_path()
            args.append("-DCMAKE_HIP_PLATFORM=amd")  # Debian's hipconfig says nvidia when nvcc is on PATH
            if rocm is not None:
                args.append(f"-DCMAKE_PREFIX_PATH={rocm}")
                if (rocm / "llvm" / "bin" / "clang++").exists():
                    args.append(f"-DCMAKE_HIP_COMPILER={rocm / 'llvm' / 'bin' / 'clang++'}")
        if _env_flag("AMD_LLAMA4_WITH_CK"):
            args.append("-DAMD_LLAMA4_WITH_CK=ON")
            if os.environ.get("CK_ROOT"):
                args.append(f"-DCK_ROOT={os.environ['CK_ROOT']}")
        jobs = os.environ.get("AMD_LLAMA4_BUILD_JOBS") or str(os.cpu_count() or 2)
        cmake = _cmake()
        print(f"amd_llama4: building {ext.name} for backend={backend} in {build_dir}", flush=True)
        subprocess.run([cmake, "-S", str(ROOT), "-B", str(build_dir), *args], check=True)
        subprocess.run([cmake, "--build", str(build_dir), "--config", "Release", "-j", jobs], check=True)


ext_modules = [] if _env_flag("AMD_LLAMA4_NO_NATIVE") else [CMakeExtension("amd_llama4._C")]
setup(ext_modules=ext_modules, cmdclass={"build_ext": CMakeBuild})
