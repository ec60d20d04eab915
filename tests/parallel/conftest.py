import os

import pytest


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    """One local Ray for the parallel tests: 2 logical CPUs, workers ask 0.5 each (deploy/tiny-cpu.yaml)."""
    if os.environ.get("CI") == "true":
        import ray
    else:
        ray = pytest.importorskip("ray")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             _temp_dir=str(tmp_path_factory.mktemp("ray")))
    yield ray
    ray.shutdown()
