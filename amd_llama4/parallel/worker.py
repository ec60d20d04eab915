"""One tensor/expert-parallel rank: its weight slices, its KV-head slice of the paged cache and a
ModelRunner. Run as a Ray actor (executor.py); every rank executes every step, rank 0 returns logits."""
from __future__ import annotations

import os

import torch


class Worker:
    def __init__(self, rank: int, world: int, init_method: str, engine_args: dict, num_blocks: int):
        import torch.distributed as dist

        from amd_llama4.engine.kv_cache import KVCache
        from amd_llama4.engine.llm_engine import EngineArgs, parse_dtype
        from amd_llama4.engine.runner import ModelRunner
        from amd_llama4.model.loader import load_model
        from amd_llama4.parallel.tp import Parallel, local_shapes

        args = EngineArgs(**engine_args)
        gpu = args.device != "cpu"
        if gpu:  # Ray (or the user) made exactly this rank's GPU visible
            torch.cuda.set_device(0)
            device = torch.device("cuda", 0)
        else:
            torch.set_num_threads(max(1, int(os.environ.get("AMD_LLAMA4_WORKER_THREADS", "1"))))
            device = torch.device("cpu")
        # gloo on CPU; NCCL on CUDA, which ROCm's torch maps to RCCL
        import datetime

        # A bounded collective timeout: if a peer dies, the survivors give up instead of hanging.
        timeout = datetime.timedelta(seconds=float(os.environ.get("AMD_LLAMA4_COLLECTIVE_TIMEOUT_S", "120")))
        dist.init_process_group("nccl" if gpu else "gloo", init_method=init_method, rank=rank, world_size=world,
                                timeout=timeout)
        self.rank, self.par = rank, Parallel(rank, world, args.expert_parallel)
        dtype = parse_dtype(args.dtype)
        self.model = load_model(args.model, dtype=dtype, device=device, quantization=args.quantization,
                                parallel=self.par, progress=False)
        s = local_shapes(self.model.config, self.par)
        fmt = "e4m3fn"
        if args.kv_cache_dtype == "fp8":
            from amd_llama4.platform import fp8_format

            fmt = fp8_format()
        self.cache = KVCache(self.model.config, num_blocks, args.block_size, dtype, device, args.kv_cache_dtype,
                             fmt, getattr(self.model, "kv_scales", None), kv_heads=(s.kv_head_start, s.n_kv_heads))
        self.runner = ModelRunner(self.model, self.cache, device)

    def ready(self) -> int:
        return self.rank

    def execute(self, items):
        logits = self.runner.execute(items)
        return logits.cpu() if self.rank == 0 else None

    def resident_weight_bytes(self) -> int:
        return sum(p.numel() * p.element_size() for p in self.model.parameters())

    def pid(self) -> int:
        return os.getpid()
