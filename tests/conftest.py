import os

# Triton fixes interpreter vs compiled mode at its first import; with no GPU device node the kernels
# can only run in the interpreter, so decide before anything imports triton (torch may).
if not (os.path.exists("/dev/kfd") or os.path.exists("/dev/nvidiactl")):
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture
def ci() -> bool:
    return os.environ.get("CI") == "true"
