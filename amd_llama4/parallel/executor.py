"""Runs tensor-parallel workers as Ray actors in a placement group (one bundle per rank, STRICT_PACK:
one node, so the process group can rendezvous on loopback)."""
from __future__ import annotations

import os
import socket

from amd_llama4.parallel.worker import Worker

# ROCm: let us, not Ray, own HIP_VISIBLE_DEVICES, or device ordinals and RCCL peers disagree
# (../shared/rocm-notes.md); CUDA_VISIBLE_DEVICES set by Ray is then the only mask.
_WORKER_ENV = {"RAY_EXPERIMENTAL_NOSET_HIP_VISIBLE_DEVICES": "1", "TOKENIZERS_PARALLELISM": "false"}


def free_port() -> int:
    """An unused TCP port on loopback (process-group rendezvous; tests' servers)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RayExecutor:
    def __init__(self, engine_args: dict, num_blocks: int, world: int, timeout_s: float = 600.0):
        import ray
        from ray.util.placement_group import placement_group, remove_placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        if not ray.is_initialized():
            ray.init(include_dashboard=False, log_to_driver=False,
                     num_cpus=max(os.cpu_count() or 1, world))
        gpu = engine_args.get("device", "cpu") != "cpu"
        cpus = float(os.environ.get("AMD_LLAMA4_WORKER_CPUS", "0.5"))
        bundle = {"CPU": cpus, "GPU": 1} if gpu else {"CPU": cpus}
        self._remove = remove_placement_group
        self.pg = placement_group([dict(bundle) for _ in range(world)], strategy="STRICT_PACK")
        ray.get(self.pg.ready(), timeout=timeout_s)
        init = f"tcp://127.0.0.1:{free_port()}"
        actor = ray.remote(Worker)
        self.workers = [
            actor.options(num_cpus=cpus, num_gpus=1 if gpu else 0, max_restarts=0,
                          runtime_env={"env_vars": dict(_WORKER_ENV)},
                          scheduling_strategy=PlacementGroupSchedulingStrategy(self.pg, r)
                          ).remote(r, world, init, engine_args, num_blocks)
            for r in range(world)]
        self._ray = ray
        try:
            ray.get([w.ready.remote() for w in self.workers], timeout=timeout_s)
        except Exception:
            self.shutdown()
            raise

    def execute(self, items):
        refs = [w.execute.remote(items) for w in self.workers]
        pending = list(refs)
        while pending:  # fail fast: a dead rank must not leave us waiting on the ranks blocked in a collective
            done, pending = self._ray.wait(pending, num_returns=1)
            self._ray.get(done[0])  # raises RayActorError if that worker died
        return self._ray.get(refs[0])

    def call(self, method: str):
        return self._ray.get([getattr(w, method).remote() for w in self.workers])

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
