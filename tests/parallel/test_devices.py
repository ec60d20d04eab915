"""One GPU per rank: the torch ordinal each tensor-parallel worker binds, under ROCm's and CUDA's
visibility conventions; with Ray and fake GPU resources on CPU, every rank gets a distinct GPU."""
import os

import pytest

from amd_llama4.engine.tp.devices import local_device_index
from amd_llama4.engine.tp.executor import resolve_tp_device, worker_bundles


@pytest.mark.parametrize("env,gpu_id,want", [
    ({}, "3", 3),  # NOSET: no mask, every GPU visible: the Ray id is the ordinal
    ({"HIP_VISIBLE_DEVICES": "4,5,6,7"}, "6", 2),  # outer mask (Ray's ids are its entries)
    ({"HIP_VISIBLE_DEVICES": "7, 5"}, "5", 1),
    ({"HIP_VISIBLE_DEVICES": "2", "ROCR_VISIBLE_DEVICES": "0,1,2,3"}, "2", 0),  # HIP indexes ROCR's list
    ({"ROCR_VISIBLE_DEVICES": "4,5,6,7"}, "5", 1),
    ({"CUDA_VISIBLE_DEVICES": "1,0"}, "0", 1),  # HIP honours CUDA_VISIBLE_DEVICES too
])
def test_rocm_ordinal(env, gpu_id, want):
    assert local_device_index([gpu_id], env, rocm=True) == want


@pytest.mark.parametrize("env,gpu_id,want", [
    ({"CUDA_VISIBLE_DEVICES": "5"}, "5", 0),  # Ray masked the actor to its one GPU
    ({"CUDA_VISIBLE_DEVICES": "2,3,5"}, "5", 2),  # RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES
    ({}, "1", 1),
    ({"CUDA_VISIBLE_DEVICES": "GPU-aa,GPU-bb"}, "GPU-bb", 1),  # UUID masks
    ({"HIP_VISIBLE_DEVICES": "0,1,2,3", "CUDA_VISIBLE_DEVICES": "3"}, "3", 0),  # HIP's mask ignored on CUDA
])
def test_cuda_ordinal(env, gpu_id, want):
    assert local_device_index([gpu_id], env, rocm=False) == want


def test_rocm_convention_from_torch_version(monkeypatch):
    import torch

    env = {"HIP_VISIBLE_DEVICES": "4,5", "CUDA_VISIBLE_DEVICES": "5"}
    monkeypatch.setattr(torch.version, "hip", "6.3.0")
    assert local_device_index(["4"], env) == 0
    monkeypatch.setattr(torch.version, "hip", None)
    with pytest.raises(RuntimeError, match="CUDA_VISIBLE_DEVICES='5' hides"):
        local_device_index(["4"], env)


def test_bad_assignments_name_the_fix():
    with pytest.raises(RuntimeError, match=r"GPUs \[\].*num_gpus=1"):
        local_device_index([], {}, rocm=True)
    with pytest.raises(RuntimeError, match=r"GPUs \['0', '1'\]"):
        local_device_index(["0", "1"], {}, rocm=False)
    with pytest.raises(RuntimeError, match="HIP_VISIBLE_DEVICES='0,1' hides"):
        local_device_index(["3"], {"HIP_VISIBLE_DEVICES": "0,1"}, rocm=True)
    with pytest.raises(RuntimeError, match="not an index"):
        local_device_index(["GPU-aa"], {}, rocm=False)


def test_worker_bundles():
    assert worker_bundles(2, False, 0.5) == [{"CPU": 0.5}, {"CPU": 0.5}]
    b = worker_bundles(4, True, 0.5, "AMD-Instinct-MI300X-OAM")
    assert len(b) == 4 and b[0] is not b[1]
    assert b[3] == {"CPU": 0.5, "GPU": 1, "accelerator_type:AMD-Instinct-MI300X-OAM": 0.001}
    assert worker_bundles(1, True, 1.0) == [{"CPU": 1.0, "GPU": 1}]


@pytest.fixture(scope="module")
def fake_gpu_ray(tmp_path_factory):
    """Ray with 4 fake GPUs whose ids come from an outer mask (4..7), as on a node started under
    CUDA/HIP_VISIBLE_DEVICES=4,5,6,7."""
    ray = pytest.importorskip("ray")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    saved = os.environ.get("CUDA_VISIBLE_DEVICES")
    os.environ["CUDA_VISIBLE_DEVICES"] = "4,5,6,7"  # the raylet and its workers inherit it
    try:
        ray.init(num_cpus=2, num_gpus=4, include_dashboard=False, log_to_driver=False,
                 _temp_dir=str(tmp_path_factory.mktemp("ray")))
    finally:
        if saved is None:
            os.environ.pop("CUDA_VISIBLE_DEVICES")
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = saved
    yield ray
    ray.shutdown()


@pytest.mark.slow
@pytest.mark.parametrize("convention", ["rocm", "cuda"])
def test_ranks_get_distinct_gpus(fake_gpu_ray, convention):
    """4 ranks in a STRICT_PACK group, bundles {"GPU": 1} as the executor makes them. ROCm: our
    workers' env (RAY_EXPERIMENTAL_NOSET_HIP_VISIBLE_DEVICES=1) leaves the outer mask
    HIP_VISIBLE_DEVICES=4,5,6,7, so ordinals are the ids' positions 0..3. CUDA: Ray masks each
    actor to its GPU, ordinal 0 of a distinct physical GPU."""
    from ray.util.placement_group import placement_group, remove_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    from amd_llama4.engine.tp.executor import _WORKER_ENV

    class Probe:  # defined here: Ray pickles a local class by value (the test module is not importable there)
        def where(self, rocm: bool):
            import ray

            from amd_llama4.engine.tp.devices import local_device_index

            ids = ray.get_gpu_ids()
            return [str(i) for i in ids], local_device_index(ids, rocm=rocm), os.environ.get("CUDA_VISIBLE_DEVICES")

    ray = fake_gpu_ray
    env = dict(_WORKER_ENV)
    if convention == "rocm":
        env["HIP_VISIBLE_DEVICES"] = "4,5,6,7"
    pg = placement_group(worker_bundles(4, True, 0.25), strategy="STRICT_PACK")
    ray.get(pg.ready(), timeout=120)
    actors = [ray.remote(Probe).options(num_cpus=0.25, num_gpus=1, runtime_env={"env_vars": env},
                                         scheduling_strategy=PlacementGroupSchedulingStrategy(pg, r)).remote()
              for r in range(4)]
    try:
        got = ray.get([a.where.remote(convention == "rocm") for a in actors], timeout=120)
    finally:
        for a in actors:
            ray.kill(a)
        remove_placement_group(pg)
    ids = [i for i, _, _ in got]
    assert all(len(i) == 1 for i in ids) and sorted(i[0] for i in ids) == ["4", "5", "6", "7"]
    if convention == "rocm":
        assert [idx for _, idx, _ in got] == [int(i[0]) - 4 for i in ids]
        assert sorted(idx for _, idx, _ in got) == [0, 1, 2, 3]
    else:
        assert all(idx == 0 and mask == i[0] for i, idx, mask in got)


def test_tp_device_auto_follows_the_ray_cluster(fake_gpu_ray):
    """A Serve replica holds no GPU itself: 'auto' asks Ray whether the workers can have some."""
    assert resolve_tp_device("auto", 4).type == "cuda"
    assert resolve_tp_device("cpu", 4).type == "cpu"
    assert str(resolve_tp_device("cuda:3", 4)) == "cuda"  # each rank binds its own ordinal
