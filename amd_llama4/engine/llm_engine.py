"""LLMEngine: requests in, one scheduler step at a time, RequestOutputs out. Synchronous core shared
by `LLM` (offline) and `AsyncEngine` (server)."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from amd_llama4.config import QuantConfig, load_config
from amd_llama4.engine.kv_cache import KVCache
from amd_llama4.engine.outputs import CompletionOutput, Logprob, RequestOutput
from amd_llama4.engine.runner import ModelRunner, StepItem
from amd_llama4.engine.sampler import Sampler, SamplingState
from amd_llama4.engine.sampling_params import SamplingParams
from amd_llama4.engine.scheduler import Scheduler, Sequence
from amd_llama4.platform import parse_dtype, resolve_device, resolve_dtype

# parse_dtype lives in platform (one dtype table); imported here for the modules that used it from here
__all__ = ["EngineArgs", "LLMEngine", "parse_dtype"]


@dataclass
class EngineArgs:
    model: str
    dtype: str | torch.dtype = "auto"  # GPU: the checkpoint's torch_dtype; CPU: see platform.resolve_dtype
    device: str = "auto"  # the GPU when torch sees one (ROCm or CUDA), else CPU
    kv_cache_dtype: str = "auto"
    quantization: str | QuantConfig | None = None
    max_model_len: int | None = None
    max_num_seqs: int = 64
    max_num_batched_tokens: int | None = None
    block_size: int = 16
    # KV memory (vLLM's names): the cache gets gpu_memory_utilization x device memory minus what the
    # weights and a profiled forward take; kv_cache_memory_bytes overrides that (and sizes it on CPU)
    gpu_memory_utilization: float = 0.9
    kv_cache_memory_bytes: int | None = None
    num_kv_blocks: int | None = None  # test hook: blocks per pool, bypassing the memory model
    enforce_eager: bool = False  # GPU: no HIP/CUDA graphs for the decode step
    tokenizer: str | None = None
    seed: int = 0
    tensor_parallel_size: int = 1
    expert_parallel: bool = False
    # Ray's accelerator type for the tensor-parallel workers' GPUs (e.g. AMD-Instinct-MI300X-OAM, H200)
    accelerator_type: str | None = None

    def __post_init__(self) -> None:
        if self.block_size < 1:
            raise ValueError(f"block_size {self.block_size} must be >= 1")
        if self.max_num_seqs < 1:
            raise ValueError(f"max_num_seqs {self.max_num_seqs} must be >= 1")
        if self.tensor_parallel_size < 1:
            raise ValueError(f"tensor_parallel_size {self.tensor_parallel_size} must be >= 1")
        if not 0 < self.gpu_memory_utilization <= 1:
            raise ValueError(f"gpu_memory_utilization {self.gpu_memory_utilization} must be in (0, 1]")
        if self.kv_cache_memory_bytes is not None and self.kv_cache_memory_bytes <= 0:
            raise ValueError(f"kv_cache_memory_bytes {self.kv_cache_memory_bytes} must be positive (or None: measure)")


@dataclass
class _Request:
    prompt: str | None
    params: SamplingParams
    sampling: SamplingState
    detok: object | None
    logprobs: list | None
    finish_reason: str | None = None
    stop_reason: int | str | None = None


class LLMEngine:
    def __init__(self, args: EngineArgs, model=None):
        from amd_llama4.engine import memory

        self.args = args
        self.parallel = args.tensor_parallel_size > 1
        # a given model runs where its weights are; else "auto" = the GPU torch sees, or the CPU
        # (tp > 1: the GPUs the Ray cluster has, each rank binding its own)
        if model is not None:
            device = next(model.parameters()).device
        elif self.parallel:
            from amd_llama4.engine.tp.executor import resolve_tp_device

            device = resolve_tp_device(args.device, args.tensor_parallel_size)
        else:
            device = resolve_device(args.device)
        cfg = self.config = model.config if model is not None else load_config(args.model)
        self.device, self.dtype = device, resolve_dtype(args.dtype, device, cfg)
        self.max_model_len = memory.model_len(args, cfg)
        self.tokenizer = self._load_tokenizer(args.tokenizer or args.model)
        self.eos_ids = (self.tokenizer.eos_token_ids if self.tokenizer is not None else cfg.eos_token_ids)
        if self.parallel:  # the workers hold the model; this process schedules
            self.model = None
            self.runner = self._start_workers()
        else:
            from amd_llama4.model.loader import load_model

            self.model = model if model is not None else load_model(
                args.model, dtype=self.dtype, device=device, quantization=args.quantization, progress=False)
        try:
            self.kv_plan, blocks = self._size_kv_cache()
            fmt = None
            if args.kv_cache_dtype == "fp8":
                from amd_llama4.platform import fp8_format

                fmt = fp8_format()
            # tp > 1: block bookkeeping only, in this process, which may hold no GPU (a Serve replica)
            self.cache = KVCache(cfg, blocks, args.block_size, self.dtype, "cpu" if self.parallel else device,
                                 args.kv_cache_dtype, fmt or "e4m3fn", getattr(self.model, "kv_scales", None),
                                 allocate=not self.parallel)
            if self.parallel:
                self.runner.call("init_cache", self.cache.num_blocks)
        except Exception:  # a start-up error (the KV cache does not fit) must not leave workers behind
            if self.parallel:
                self.runner.shutdown()
            raise
        self.scheduler = Scheduler(self.cache, args.max_num_seqs, memory.batched_tokens(args))
        if not self.parallel:
            self.runner = ModelRunner(self.model, self.cache, device, args.enforce_eager,
                                      max_model_len=self.max_model_len, max_num_seqs=args.max_num_seqs)
        self.sampler = Sampler()
        self._requests: dict[str, Sequence] = {}

    def _start_workers(self):
        from dataclasses import fields

        from amd_llama4.engine.tp.executor import RayExecutor

        # field by field, not asdict(): a QuantConfig must stay a QuantConfig. Device and dtype go
        # resolved, so every rank and this driver's block arithmetic agree on them.
        wargs = {f.name: getattr(self.args, f.name) for f in fields(self.args)}
        wargs.update(device=self.device.type, dtype=self.dtype)
        return RayExecutor(wargs, self.args.tensor_parallel_size)

    def _size_kv_cache(self):
        """-> (KVPoolPlan or None, blocks per pool): the memory model (engine/memory.py), or the
        num_kv_blocks test hook as given."""
        from amd_llama4.engine import memory

        a, cfg = self.args, self.config
        if a.num_kv_blocks is not None:
            return None, a.num_kv_blocks
        heads = cfg.num_key_value_heads
        if self.parallel:  # every rank holds the same number of KV heads (its slice)
            from amd_llama4.parallel.tp import Parallel, local_shapes

            heads = local_shapes(cfg, Parallel(0, a.tensor_parallel_size, a.expert_parallel)).n_kv_heads
            budget = min(self.runner.call("kv_budget"))  # pools are equal on every rank: the smallest decides
        else:
            budget = memory.measure_kv_budget(self.model, a, self.device)
        block_bytes = memory.kv_block_bytes(cfg, a.block_size, self.dtype, a.kv_cache_dtype, heads)
        plan = memory.plan_kv_pools(cfg, budget, block_bytes, a.block_size, a.max_num_seqs, self.max_model_len)
        plan.log(budget)
        return plan, plan.blocks

    @staticmethod
    def _load_tokenizer(source: str):
        from amd_llama4.config import PRESETS
        from amd_llama4.engine.tokenizer import Tokenizer

        if source in PRESETS and source.startswith("tiny"):
            return Tokenizer.from_pretrained(source)
        if os.path.isdir(source) and os.path.exists(os.path.join(source, "tokenizer.json")):
            return Tokenizer.from_pretrained(source)
        return None  # token-id prompts only; outputs carry ids and empty text

    # -- requests -------------------------------------------------------------------------------
    def encode(self, prompt: str | list[int]) -> tuple[str | None, list[int]]:
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise ValueError(f"model {self.args.model!r} has no tokenizer.json: pass token ids, not text")
            return prompt, self.tokenizer.encode(prompt)
        ids = list(prompt)
        vocab = self.config.vocab_size
        if not ids or any(not isinstance(t, int) or not 0 <= t < vocab for t in ids):
            raise ValueError(f"prompt token ids must be a non-empty list of ints in [0, {vocab})")
        return None, ids

    def add_request(self, request_id: str, prompt: str | list[int], params: SamplingParams | None = None) -> None:
        params = params or SamplingParams()
        if request_id in self._requests:
            raise ValueError(f"request id {request_id!r} is already running")
        text, ids = self.encode(prompt)
        if len(ids) >= self.max_model_len:
            raise ValueError(f"prompt has {len(ids)} tokens; max_model_len is {self.max_model_len} "
                             "(room for at least one generated token is needed)")
        detok = None
        if self.tokenizer is not None:
            from amd_llama4.engine.detokenizer import IncrementalDetokenizer

            detok = IncrementalDetokenizer(self.tokenizer, params, ids)
        state = _Request(text, params, SamplingState(params, ids, self.eos_ids), detok,
                         [] if params.logprobs is not None else None)
        seq = Sequence(request_id, list(ids), len(ids), state)
        self._requests[request_id] = seq
        self.scheduler.add(seq)

    def abort(self, request_id: str) -> RequestOutput | None:
        seq = self._requests.pop(request_id, None)
        if seq is None:
            return None
        self.scheduler.finish(seq)
        seq.state.finish_reason = "abort"
        return self._output(seq)

    def shutdown(self) -> None:
        if self.parallel:
            self.runner.shutdown()

    def has_unfinished(self) -> bool:
        return self.scheduler.has_work()

    def stats(self) -> dict:
        return {"num_running": len(self.scheduler.running), "num_waiting": len(self.scheduler.waiting),
                **self.cache.usage(), "kv_pool_blocks": dict(self.cache.num_blocks)}

    # -- one step -------------------------------------------------------------------------------
    def step(self) -> list[RequestOutput]:
        sched = self.scheduler.schedule()
        outputs = []
        for seq, why in sched.failed:
            self._requests.pop(seq.request_id, None)
            seq.state.finish_reason = "error"
            out = self._output(seq)
            out.error = why
            outputs.append(out)
        if not sched.seqs:
            return outputs
        # whole prompt (or the last token) computed this step: sample the next one
        sample = [s.num_computed + n == len(s.token_ids) for s, n in zip(sched.seqs, sched.num_tokens)]
        results = self._execute(sched.seqs, sched.num_tokens, sample)
        for seq, n in zip(sched.seqs, sched.num_tokens):
            seq.num_computed += n
        seqs = [s for s, smp in zip(sched.seqs, sample) if smp]
        for seq, res in zip(seqs, results):
            self._append(seq, res)
            outputs.append(self._output(seq))
            if seq.state.finish_reason is not None:
                self._requests.pop(seq.request_id, None)
                self.scheduler.finish(seq)
        return outputs

    def _append(self, seq: Sequence, res) -> None:
        st = seq.state
        tok = res.token_id
        seq.token_ids.append(tok)
        st.sampling.append(tok)
        if st.logprobs is not None:
            name = self.tokenizer.token_text if self.tokenizer is not None else str
            st.logprobs.append((Logprob(tok, res.logprob, name(tok)),
                                [Logprob(i, lp, name(i)) for i, lp in (res.top_logprobs or [])]))
        finished, reason, stop_reason = st.sampling.check_stop(tok)
        if st.detok is not None:
            st.detok.add(tok)
            if st.detok.stopped_by is not None:
                finished, reason, stop_reason = True, "stop", st.detok.stopped_by
        if not finished and len(seq.token_ids) >= self.max_model_len:
            finished, reason = True, "length"
        if finished:
            st.finish_reason, st.stop_reason = reason, stop_reason
            if st.detok is not None:
                st.detok.finish()

    def _output(self, seq: Sequence) -> RequestOutput:
        st = seq.state
        gen = seq.token_ids[seq.num_prompt:]
        text = st.detok.text if st.detok is not None else ""
        comp = CompletionOutput(0, text, list(gen), st.finish_reason, st.stop_reason,
                                list(st.logprobs) if st.logprobs is not None else None)
        return RequestOutput(seq.request_id, st.prompt, seq.token_ids[:seq.num_prompt], [comp],
                             finished=st.finish_reason is not None)

    def _execute(self, seqs: list[Sequence], num_tokens: list[int], sample: list[bool]) -> list:
        """Run one step; -> a SampleResult per sequence with sample=True, in order. Sampling runs on
        the model's device either way: here (tp=1), or on rank 0, which returns only the sampled
        ids and logprobs; the workers get the step as block-table changes (engine/tp/wire.py)."""
        states = [s.state.sampling for s, smp in zip(seqs, sample) if smp]
        if self.parallel:
            if getattr(self, "_wire", None) is None:
                from amd_llama4.engine.tp.wire import StepEncoder

                self._wire = StepEncoder()
            live = {s.arrival for s in self._requests.values()}
            msg = self._wire.encode(seqs, num_tokens, sample, [s.state.sampling for s in seqs], live)
            return self.runner.execute(msg)
        items = [StepItem(s.blocks, s.token_ids[s.num_computed:s.num_computed + n], s.num_computed)
                 for s, n in zip(seqs, num_tokens)]
        logits = self.runner.execute(items)  # [B, V] on the model's device
        if not states:
            return []
        rows = [i for i, smp in enumerate(sample) if smp]
        return self.sampler(logits if len(rows) == len(seqs) else logits[rows], states)
