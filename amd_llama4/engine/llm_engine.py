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

_DTYPES = {"auto": torch.float32, "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
           "bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16,
           "half": torch.float16}


def parse_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return _DTYPES[str(dtype).lower()]
    except KeyError:
        raise ValueError(f"dtype {dtype!r} not in {sorted(_DTYPES)}") from None


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

    def __post_init__(self) -> None:
        if self.block_size < 1:
            raise ValueError(f"block_size {self.block_size} must be >= 1")
        if self.max_num_seqs < 1:
            raise ValueError(f"max_num_seqs {self.max_num_seqs} must be >= 1")
        if self.tensor_parallel_size < 1:
            raise ValueError(f"tensor_parallel_size {self.tensor_parallel_size} must be >= 1")


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
        from amd_llama4.model.loader import load_model

        self.args = args
        self.dtype = parse_dtype(args.dtype)
        self.parallel = args.tensor_parallel_size > 1
        if self.parallel:  # the workers hold the model; this process schedules
            self.model = None
            cfg = self.config = load_config(args.model)
        else:
            self.model = model if model is not None else load_model(
                args.model, dtype=self.dtype, device=args.device, quantization=args.quantization, progress=False)
            cfg = self.config = self.model.config
        self.max_model_len = min(args.max_model_len or cfg.max_position_embeddings, cfg.max_position_embeddings)
        self.tokenizer = self._load_tokenizer(args.tokenizer or args.model)
        self.eos_ids = (self.tokenizer.eos_token_ids if self.tokenizer is not None else cfg.eos_token_ids)
        blocks = args.num_kv_blocks or self._default_blocks()
        fmt = None
        if args.kv_cache_dtype == "fp8":
            from amd_llama4.platform import fp8_format

            fmt = fp8_format()
        self.cache = KVCache(cfg, blocks, args.block_size, self.dtype, args.device, args.kv_cache_dtype,
                             fmt or "e4m3fn", getattr(self.model, "kv_scales", None), allocate=not self.parallel)
        self.scheduler = Scheduler(self.cache, args.max_num_seqs,
                                   args.max_num_batched_tokens or max(2048, args.block_size))
        if self.parallel:
            from dataclasses import fields

            from amd_llama4.parallel.executor import RayExecutor

            # field by field, not asdict(): a QuantConfig must stay a QuantConfig
            self.runner = RayExecutor({f.name: getattr(args, f.name) for f in fields(args)}, blocks,
                                      args.tensor_parallel_size)
        else:
            self.runner = ModelRunner(self.model, self.cache, args.device)
        self.sampler = Sampler()
        self._requests: dict[str, Sequence] = {}

    def _default_blocks(self) -> int:
        a, cfg = self.args, self.config
        per_seq = -(-self.max_model_len // a.block_size)
        if cfg.attention_chunk_size:  # chunked layers only ever hold one chunk
            per_seq = max(per_seq, -(-cfg.attention_chunk_size // a.block_size) + 1)
        return min(per_seq * min(a.max_num_seqs, 16), 1 << 16)

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
                **self.cache.usage()}

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
        items = [StepItem(s.blocks, s.token_ids[s.num_computed:s.num_computed + n], s.num_computed)
                 for s, n in zip(sched.seqs, sched.num_tokens)]
        logits = self.runner.execute(items)
        done_rows = []
        for row, (seq, n) in enumerate(zip(sched.seqs, sched.num_tokens)):
            seq.num_computed += n
            if seq.pending == 0:  # whole prompt (or the last token) computed: sample the next one
                done_rows.append(row)
        if not done_rows:
            return outputs
        seqs = [sched.seqs[r] for r in done_rows]
        results = self.sampler(logits[done_rows], [s.state.sampling for s in seqs])
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
