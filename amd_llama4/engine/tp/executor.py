"""Runs tensor-parallel workers as Ray actors in a placement group (one bundle per rank, STRICT_PACK:
one node, so the process group can rendezvous on loopback)."""
from __future__ import annotations

import os
import socket

from amd_llama4.engine.tp.worker import Worker

# ROCm: let us, not Ray, own HIP_VISIBLE_DEVICES, or device ordinals and RCCL peers disagree
# (../shared/rocm-notes.md); CUDA_VISIBLE_DEVICES set by Ray is then the only mask.
_WORKER_ENV = {"RAY_EXPERIMENTAL_NOSET_HIP_VISIBLE_DEVICES": "1", "TOKENIZERS_PARALLELISM": "false"}


def free_port() -> int:
    """An unused TCP port on loopback (process-group rendezvous; tests' servers)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ensure_ray(world: int):
    """The Ray of this process: the Serve cluster's, else a local one with a CPU per rank at least."""
    import ray

    if not ray.is_initialized():
        ray.init(include_dashboard=False, log_to_driver=False, num_cpus=max(os.cpu_count() or 1, world))
    return ray


def resolve_tp_device(device, world: int):
    """'auto' for tensor-parallel workers: the GPU when torch here sees one or when the Ray cluster
    has GPUs (a Serve replica holds none itself: num_gpus 0, so its own torch may see none), else
    the CPU. Any other spec as platform.resolve_device reads it, without an index: each rank binds
    the GPU Ray gives it (engine/tp/devices.py)."""
    import torch

    from amd_llama4.platform import resolve_device

    if device is None or device == "auto":
        if torch.cuda.is_available() or ensure_ray(world).cluster_resources().get("GPU", 0) > 0:
            return torch.device("cuda")
        return torch.device("cpu")
    d = resolve_device(device)
    return torch.device(d.type)


class RayExecutor:
    """engine_args: EngineArgs fields. On a GPU (resolve_tp_device): one GPU per rank, placement
    bundles {"GPU": 1}, plus the accelerator_type resource when one is named."""

    def __init__(self, engine_args: dict, world: int, timeout_s: float = 600.0):
        import ray
        from ray.util.placement_group import placement_group, remove_placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        ensure_ray(world)
        self._ray, self._remove = ray, remove_placement_group
        device = resolve_tp_device(engine_args.get("device", "auto"), world).type
        engine_args, gpu = {**engine_args, "device": device}, device == "cuda"
        cpus = float(os.environ.get("AMD_LLAMA4_WORKER_CPUS", "0.5"))
        self.pg = placement_group(worker_bundles(world, gpu, cpus, engine_args.get("accelerator_type")),
                                  strategy="STRICT_PACK")
        ray.get(self.pg.ready(), timeout=timeout_s)
        init = f"tcp://127.0.0.1:{free_port()}"
        actor = ray.remote(Worker)
        self.workers = [
            actor.options(num_cpus=cpus, num_gpus=1 if gpu else 0, max_restarts=0,
                          runtime_env={"env_vars": dict(_WORKER_ENV)},
                          scheduling_strategy=PlacementGroupSchedulingStrategy(self.pg, r)
                          ).remote(r, world, init, engine_args)
            for r in range(world)]
        try:
            ray.get([w.ready.remote() for w in self.workers], timeout=timeout_s)
        except Exception:
            self.shutdown()
            raise

    def execute(self, msg):
        """One StepMessage to every rank (put once); -> rank 0's SampleResults."""
        ref = self._ray.put(msg)
        refs = [w.execute.remote(ref) for w in self.workers]
        pending, first = list(refs), None
        while pending:  # fail fast: a dead rank must not leave us waiting on the ranks blocked in a collective
            done, pending = self._ray.wait(pending, num_returns=1)
            out = self._ray.get(done[0])  # raises RayActorError if that worker died
            if done[0] == refs[0]:
                first = out
        return first

    def call(self, method: str, *args):
        """method(*args) on every rank; -> their results, by rank."""
        return self._ray.get([getattr(w, method).remote(*args) for w in self.workers])

    def shutdown(self) -> None:
        for w in getattr(self, "workers", []):
            try:
                self._ray.kill(w)
            except Exception:  # noqa: BLE001 - already gone
                pass
        try:
            self._remove(self.pg)
        except Exception:  # noqa: BLE001
            pass


def worker_bundles(world: int, gpu: bool, cpus: float, accelerator_type: str | None = None) -> list[dict]:
    """One placement bundle per rank. accelerator_type (Ray's names, e.g. AMD-Instinct-MI300X-OAM)
    pins the GPU bundles to such nodes, as Ray does for an actor's accelerator_type."""
    bundle = {"CPU": cpus}
    if gpu:
        bundle["GPU"] = 1
        if accelerator_type:
            bundle[f"accelerator_type:{accelerator_type}"] = 0.001
    return [dict(bundle) for _ in range(world)]
