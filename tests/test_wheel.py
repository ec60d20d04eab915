"""`pip wheel .` builds an installable wheel that carries the native extension, the packaged tokenizer
and the tuned kernel configs; installed on its own, it imports the compiled `_C` (not the source tree)."""
import os
import subprocess
import sys
import zipfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_pip_wheel_contains_extension_and_installs(tmp_path):
    wheels = tmp_path / "wheels"
    env = {k: v for k, v in os.environ.items() if k != "AMD_LLAMA4_NO_NATIVE"}  # also in the no-native pass
    subprocess.run([sys.executable, "-m", "pip", "wheel", ROOT, "--no-deps", "-q", "-w", str(wheels)],
                   check=True, timeout=900, env={**env, "AMD_LLAMA4_REQUIRE_NATIVE": "1"})
    (wheel,) = wheels.glob("amd_llama4-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert any(n.startswith("amd_llama4/_C") and n.endswith(".so") for n in names), names
    assert "amd_llama4/assets/tiny_tokenizer/tokenizer.json" in names
    assert any(n.startswith("amd_llama4/tuned/") and n.endswith(".json") for n in names)
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
                   check=True, timeout=300)
    probe = ("import amd_llama4, amd_llama4.ops.native as n; "
             "print(amd_llama4.__file__); print(n.available()); print(n.build_info()['backend'])")
    out = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                         env={**env, "PYTHONPATH": str(target)}, check=True).stdout.split()
    assert out[0].startswith(str(target)) and out[1] == "True" and out[2] == "cpu"
