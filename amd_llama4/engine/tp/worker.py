"""One tensor/expert-parallel rank: its weight slices, its KV-head slice of the paged cache and a
ModelRunner. Run as a Ray actor (executor.py). Every rank executes every step from the same
StepMessage (engine/tp/wire.py); rank 0 samples on its device and returns only SampleResults."""
from __future__ import annotations

import datetime
import os

import torch


class Worker:
    def __init__(self, rank: int, world: int, init_method: str, engine_args: dict):
        import torch.distributed as dist

        from amd_llama4.engine.llm_engine import EngineArgs
        from amd_llama4.engine.sampler import Sampler
        from amd_llama4.model.loader import load_model
        from amd_llama4.parallel.tp import Parallel
        from amd_llama4.engine.tp.wire import StepMirror
        from amd_llama4.platform import parse_dtype

        args = self.args = EngineArgs(**engine_args)
        gpu = args.device != "cpu"  # RayExecutor resolved it: "cuda" or "cpu"
        if gpu:
            from amd_llama4.engine.tp.devices import bind_rank_device

            self.device = bind_rank_device()
        else:
            torch.set_num_threads(max(1, int(os.environ.get("AMD_LLAMA4_WORKER_THREADS", "1"))))
            self.device = torch.device("cpu")
        # A bounded collective timeout: if a peer dies, the survivors give up instead of hanging.
        timeout = datetime.timedelta(seconds=float(os.environ.get("AMD_LLAMA4_COLLECTIVE_TIMEOUT_S", "120")))
        # gloo on CPU; NCCL on CUDA, which ROCm's torch maps to RCCL
        dist.init_process_group("nccl" if gpu else "gloo", init_method=init_method, rank=rank, world_size=world,
                                timeout=timeout)
        self.rank, self.par = rank, Parallel(rank, world, args.expert_parallel)
        self.dtype = parse_dtype(args.dtype)
        self.model = load_model(args.model, dtype=self.dtype, device=self.device, quantization=args.quantization,
                                parallel=self.par, progress=False, cpu_offload_experts=args.cpu_offload_experts)
        self.mirror, self.sampler = StepMirror(self._structured() if rank == 0 else None), Sampler()
        self.runner = None  # init_cache, once the driver has sized the KV pools
        # images: "weights" = this rank encodes every image of a step; "data" = its share, then one all_gather
        self.encode = None
        if args.mm_encoder_tp_mode == "data":
            from amd_llama4.engine.mm_encoder_dp import DataParallelEncoder

            self.encode = DataParallelEncoder(rank, world)

    def _structured(self):
        """Rank 0 samples: it builds grammar matchers (structured outputs) from the engine's tokenizer,
        loaded on the first constrained request."""
        from amd_llama4.structured.backend import LazyBackend

        def load():
            from amd_llama4.engine.llm_engine import LLMEngine

            tok = LLMEngine._load_tokenizer(self.args.tokenizer or self.args.model)
            eos = tok.eos_token_ids if tok is not None else self.model.config.eos_token_ids
            return tok, eos

        return LazyBackend(load)

    def ready(self) -> int:
        return self.rank

    def device_index(self) -> int | None:
        return self.device.index

    def kv_budget(self) -> int:
        """Bytes this rank can give its KV-head slice of the cache (engine/memory.py's model)."""
        from amd_llama4.engine.memory import measure_kv_budget

        return measure_kv_budget(self.model, self.args, self.device)

    def init_cache(self, blocks) -> None:
        """blocks: per-pool block counts ({"global": n, "chunked": m}), equal on every rank."""
        from amd_llama4.engine.kv_cache import KVCache
        from amd_llama4.engine.memory import model_len
        from amd_llama4.engine.runner import ModelRunner
        from amd_llama4.parallel.tp import local_shapes

        fmt = "e4m3fn"
        if self.args.kv_cache_dtype == "fp8":
            from amd_llama4.platform import fp8_format

            fmt = fp8_format()
        s = local_shapes(self.model.config, self.par)
        cache = KVCache(self.model.config, blocks, self.args.block_size, self.dtype, self.device,
                        self.args.kv_cache_dtype, fmt, getattr(self.model, "kv_scales", None),
                        kv_heads=(s.kv_head_start, s.n_kv_heads))
        self.runner = ModelRunner(self.model, cache, self.device, self.args.enforce_eager,
                                  max_model_len=model_len(self.args, self.model.config),
                                  max_num_seqs=self.args.max_num_seqs)

    def execute(self, msg):
        """msg: a StepMessage. -> rank 0: a SampleResult per sampled row; other ranks: None."""
        if self.runner is None:
            raise RuntimeError("Worker.execute before init_cache: the engine must size the KV cache first")
        items, rows, states = self.mirror.apply(msg)
        if self.mirror.images:  # early fusion: this rank's replicated tower, its own encoder cache
            from amd_llama4.engine.mm_inputs import step_image_features

            feats = step_image_features(self.mirror.image_pieces(msg), self.mirror.encoder_cache, self.model,
                                        self.encode)
            for it, f in zip(items, feats):
                it.images = f
        # every rank joins the collectives; only rank 0 samples, so only it runs the LM head, on the sampled rows
        logits = self.runner.execute(items, rows=rows if self.rank == 0 else [])  # [len(rows), V]
        if self.rank != 0 or not rows:
            return None if self.rank != 0 else []
        results = self.sampler(logits, states)
        for st, res in zip(states, results):  # the driver appends the same ids to its own states
            st.append(res.token_id)
        return results

    def has_vision(self) -> bool:
        """The loaded model has a vision tower (the checkpoint held vision_model.* tensors)."""
        from amd_llama4.model.multimodal import Llama4ForConditionalGeneration

        return isinstance(self.model, Llama4ForConditionalGeneration)

    def mm_encoder_stats(self) -> dict:
        """Images this rank cached (encoded: all of them) and ran through its own tower (local); in
        data mode also the images per distributed encode call."""
        cache = self.mirror.encoder_cache
        return {"encoded": cache.num_encoded,
                "local": self.encode.num_local if self.encode is not None else cache.num_encoded,
                "calls": list(self.encode.calls) if self.encode is not None else None}

    def resident_weight_bytes(self) -> int:
        return sum(p.numel() * p.element_size() for p in self.model.parameters())

    def pid(self) -> int:
        return os.getpid()
