"""Which local GPU a tensor-parallel rank uses: the one Ray assigned it, as a torch device ordinal.

Ray hands each GPU actor ids (`ray.get_gpu_ids()`) in the namespace of the visibility mask the
raylet started under (its entries, or 0..n-1 without one). torch numbers the GPUs the process can
see, i.e. the positions in the mask the process itself sees:
  CUDA: Ray sets CUDA_VISIBLE_DEVICES to the actor's ids, so the ordinal is 0 for one GPU (with
        RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES the outer mask stays: same rule).
  ROCm: with RAY_EXPERIMENTAL_NOSET_HIP_VISIBLE_DEVICES=1 (our workers, ../shared/rocm-notes.md)
        Ray masks nothing: every worker sees every GPU, and the ordinal is the Ray id's position in
        the outer HIP_VISIBLE_DEVICES (else ROCR_VISIBLE_DEVICES, else CUDA_VISIBLE_DEVICES, which
        HIP also honours), or the id itself without a mask. A bare set_device(0) put every rank on
        GPU 0.
"""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

# Mask variables in the order the runtime applies them to ordinals (first set one wins).
_MASKS = {"rocm": ("HIP_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES", "CUDA_VISIBLE_DEVICES"),
          "cuda": ("CUDA_VISIBLE_DEVICES",)}


def visible_mask(env: Mapping[str, str], rocm: bool) -> tuple[str, list[str]] | None:
    """(variable, entries) of the mask that numbers this process's GPUs; None: no mask."""
    for var in _MASKS["rocm" if rocm else "cuda"]:
        value = env.get(var)
        if value is not None:
            return var, [x.strip() for x in value.split(",") if x.strip()]
    return None


def local_device_index(gpu_ids: Sequence[str | int], env: Mapping[str, str] | None = None,
                       rocm: bool | None = None) -> int:
    """torch ordinal of this rank's GPU. gpu_ids: `ray.get_gpu_ids()` of the calling actor (one
    entry: one GPU per rank); env: the process environment; rocm: default `torch.version.hip`."""
    if rocm is None:
        import torch

        rocm = bool(torch.version.hip)
    env = os.environ if env is None else env
    if len(gpu_ids) != 1:
        raise RuntimeError(f"tensor-parallel worker: Ray assigned GPUs {list(gpu_ids)}, expected exactly one; "
                           "each worker actor must request num_gpus=1 (engine/tp/executor.py)")
    gid = str(gpu_ids[0]).strip()
    mask = visible_mask(env, rocm)
    if mask is None:
        if not gid.isdigit():
            raise RuntimeError(f"tensor-parallel worker: Ray GPU id {gid!r} is not an index and no "
                               f"{'/'.join(_MASKS['rocm' if rocm else 'cuda'])} mask maps it")
        return int(gid)
    var, entries = mask
    if gid not in entries:
        raise RuntimeError(f"tensor-parallel worker: Ray assigned GPU {gid!r}, which {var}={','.join(entries)!r} "
                           f"hides from this process; start Ray under the same {var} its workers see")
    return entries.index(gid)


def bind_rank_device():
    """Inside a Ray GPU actor: the torch device of the GPU Ray assigned it, made current."""
    import ray
    import torch

    idx = local_device_index(ray.get_gpu_ids())
    count = torch.cuda.device_count()
    if idx >= count:
        raise RuntimeError(f"tensor-parallel worker: device ordinal {idx} (Ray GPU {ray.get_gpu_ids()}) "
                           f"but torch sees {count} GPU(s); check the *_VISIBLE_DEVICES masks")
    torch.cuda.set_device(idx)
    return torch.device("cuda", idx)
