import os

import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def pytest_collection_modifyitems(config, items):
    # In CI everything runs; locally `-m "not slow"` skips the few slow ones.
    pass


@pytest.fixture
def ci() -> bool:
    return os.environ.get("CI") == "true"
