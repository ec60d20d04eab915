"""LLMEngine: requests in, one scheduler step at a time, RequestOutputs out. Synchronous core shared
by `LLM` (offline) and `AsyncEngine` (server)."""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch

from amd_llama4.config import QuantConfig, load_config
from amd_llama4.engine.kv_cache import KVCache
from amd_llama4.engine.mm_inputs import EncoderCache, MMRequest, MultiModalProcessor, images_of, step_image_features
from amd_llama4.engine.outputs import CompletionOutput, Logprob, RequestOutput, select_best
from amd_llama4.engine.runner import ModelRunner, StepItem
from amd_llama4.engine.sampler import Sampler, SamplingState
from amd_llama4.engine.sampling_params import RequestOutputKind, SamplingParams
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
    # automatic prefix caching (vLLM's default): requests reuse cached KV blocks of a shared prefix
    enable_prefix_caching: bool = True
    # images under tensor parallelism (vLLM's name): "weights" = every rank encodes every image with its
    # replicated tower; "data" = each rank encodes a share of a step's images, one all_gather shares them
    mm_encoder_tp_mode: str = "weights"
    # routed experts of 'all' / the first N MoE layers stay in host memory and run on the CPU
    # (model/offload.py); a GPU step then waits on the host per such layer: no decode graphs (eager)
    cpu_offload_experts: str | int | None = None

    def __post_init__(self) -> None:
        from amd_llama4.model.offload import check_offload_spec

        self.cpu_offload_experts = check_offload_spec(self.cpu_offload_experts)
        if self.cpu_offload_experts not in (None, 0):
            self.enforce_eager = True
        if self.block_size < 1:
            raise ValueError(f"block_size {self.block_size} must be >= 1")
        if self.max_num_seqs < 1:
            raise ValueError(f"max_num_seqs {self.max_num_seqs} must be >= 1")
        if self.tensor_parallel_size < 1:
            raise ValueError(f"tensor_parallel_size {self.tensor_parallel_size} must be >= 1")
        if self.max_num_batched_tokens is not None and self.max_num_batched_tokens < self.max_num_seqs:
            # every running decode needs a token of the step budget (vLLM's rule)
            raise ValueError(f"max_num_batched_tokens {self.max_num_batched_tokens} is smaller than max_num_seqs "
                             f"{self.max_num_seqs}: raise it or lower max_num_seqs")
        if not 0 < self.gpu_memory_utilization <= 1:
            raise ValueError(f"gpu_memory_utilization {self.gpu_memory_utilization} must be in (0, 1]")
        if self.kv_cache_memory_bytes is not None and self.kv_cache_memory_bytes <= 0:
            raise ValueError(f"kv_cache_memory_bytes {self.kv_cache_memory_bytes} must be positive (or None: measure)")
        if self.mm_encoder_tp_mode not in ("weights", "data"):
            raise ValueError(f"mm_encoder_tp_mode {self.mm_encoder_tp_mode!r} must be 'weights' (every rank encodes "
                             "every image) or 'data' (ranks split a step's images)")


@dataclass(eq=False)
class _Request:
    """One user request: n (or best_of) samples of one prompt, each a Sequence."""
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    params: SamplingParams
    seqs: list[Sequence] = field(default_factory=list)
    failed: bool = False  # a sample ended in an error: the others end as "abort"
    mm: MMRequest | None = None  # its images (features held in the encoder cache until it ends)
    # params.prompt_logprobs: one entry per prompt position (the first stays None), filled by
    # position as prefill pieces run (a recompute after preemption rewrites the same values)
    prompt_logprobs: list | None = None
    prompt_lps_left: int = 0  # positions not yet filled
    prompt_lps_sent: bool = False


@dataclass(eq=False)
class _SeqState:
    """One sample's state (Sequence.state); step() reads `sampling` and `finish_reason`."""
    request: _Request
    index: int
    sampling: SamplingState
    detok: object | None
    logprobs: list | None  # entries not yet sent (DELTA) or all of them (CUMULATIVE); None: not asked
    cumulative_logprob: float | None  # None: no logprobs computed for this sample
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    sent_tokens: int = 0  # generated ids already in an output (DELTA)
    new_text: list[str] = field(default_factory=list)  # detokenized pieces not yet sent (DELTA)


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
        if model is None and str(args.model).lower().endswith(".gguf"):  # llama.cpp GGUF: config from its metadata
            from amd_llama4.gguf import read_config

            cfg = self.config = read_config(args.model)
        else:
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
                args.model, dtype=self.dtype, device=device, quantization=args.quantization, progress=False,
                cpu_offload_experts=args.cpu_offload_experts)
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
        self.scheduler = Scheduler(self.cache, args.max_num_seqs, memory.batched_tokens(args),
                                   enable_prefix_caching=args.enable_prefix_caching)
        if not self.parallel:
            self.runner = ModelRunner(self.model, self.cache, device, args.enforce_eager,
                                      max_model_len=self.max_model_len, max_num_seqs=args.max_num_seqs)
        self.sampler = Sampler()
        self.mm, self._mm_error = self._multimodal()
        self.encoder_cache = EncoderCache()  # tp > 1: each rank holds its own (engine/tp/worker.py)
        self._requests: dict[str, Sequence] = {}  # sequence id -> live Sequence (one per sample)
        self._groups: dict[str, _Request] = {}  # request id -> its unfinished request
        self._structured = None  # structured.backend.StructuredBackend, built on the first constrained request

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

    def _multimodal(self) -> tuple[MultiModalProcessor | None, str | None]:
        """-> (the image processor + prompt expansion, None), or (None, why this engine takes no images)."""
        from amd_llama4.model.multimodal import Llama4ForConditionalGeneration

        if self.parallel:
            has_tower = self.config.is_multimodal and all(self.runner.call("has_vision"))
        else:
            has_tower = isinstance(self.model, Llama4ForConditionalGeneration)
        if not has_tower:
            return None, (f"model {self.args.model!r} has no vision tower (a text-only checkpoint: no "
                          "vision_config, or no vision_model.* tensors)")
        try:
            a = self.args
            return MultiModalProcessor.for_model(self.config, self.tokenizer, a.model, a.tokenizer), None
        except (ValueError, FileNotFoundError) as e:  # text still works; images say why not
            return None, str(e)

    @staticmethod
    def _load_tokenizer(source: str):
        from amd_llama4.config import PRESETS
        from amd_llama4.engine.tokenizer import Tokenizer

        if source in PRESETS and source.startswith("tiny"):
            return Tokenizer.from_pretrained(source)
        if (os.path.isdir(source) and os.path.exists(os.path.join(source, "tokenizer.json"))
                or str(source).lower().endswith(".gguf")):  # GGUF: from its tokenizer.ggml.* metadata
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

    def add_request(self, request_id: str, prompt: str | list[int], params: SamplingParams | None = None,
                    multi_modal_data: dict | None = None) -> None:
        """Queue a request: one Sequence per sample (params.best_of or n). Sample i > 0 has the
        sequence id f"{request_id}#{i}" and `parent` = sample 0, so the scheduler can admit it once
        the parent's prompt is computed and it shares the prompt's cached blocks.
        multi_modal_data: {"image": PIL image | [images]}, one `<|image|>` token of the prompt per
        image; each becomes its tile/patch tokens (counted in max_model_len and prompt tokens)."""
        params = params or SamplingParams()
        seq_ids = [request_id] + [f"{request_id}#{i}" for i in range(1, params.num_samples)]
        if request_id in self._groups or any(i in self._requests for i in seq_ids):
            raise ValueError(f"request id {request_id!r} is already running")
        text, ids = self.encode(prompt)
        if params.structured_outputs is not None:  # compile now: a bad grammar is this call's ValueError
            self._structured_backend().compile(params.structured_outputs)
        ids, mm = self._expand_images(ids, images_of(multi_modal_data))
        if len(ids) >= self.max_model_len:
            n_img = sum(im.end - im.start for im in mm.images) if mm is not None else 0
            raise ValueError(f"prompt has {len(ids)} tokens" + (f" ({n_img} of them for {len(mm.images)} image(s))"
                             if n_img else "") + f"; max_model_len is {self.max_model_len} (room for at least "
                             "one generated token is needed)" + ("; use fewer or smaller images" if n_img else ""))
        req = _Request(request_id, text, ids, params, mm=mm)
        extra = mm.block_extra_keys(self.args.block_size) if mm is not None else None
        if params.prompt_logprobs is not None:
            if self.parallel:
                raise ValueError("prompt_logprobs is not supported with tensor_parallel_size > 1 yet")
            if self.scheduler.prefix is not None and "global" not in self.cache.kinds:
                # chunked-only models start a prompt at its last chunk (earlier K/V is never read)
                raise ValueError("prompt_logprobs on a model without global attention layers needs "
                                 "enable_prefix_caching=False (the prefix cache skips the rows before the last chunk)")
            req.prompt_logprobs = [None] * len(ids)
            req.prompt_lps_left = len(ids) - 1
            # Every prompt row needs its logits: a key of its own on block 0 (prefix_cache.block_hashes
            # chains keys) means no cached prefix can skip rows. Its samples share the key, so they
            # still share its prompt blocks.
            extra = {**(extra or {}), 0: b"prompt_logprobs:" + os.urandom(16) + (extra or {}).get(0, b"")}
        for i, seq_id in enumerate(seq_ids):
            seq = Sequence(seq_id, list(ids), len(ids), self._sample_state(req, i))
            seq.parent = req.seqs[0] if req.seqs else None
            seq.block_extra_keys = extra  # prompts with other images never share a block with this one
            req.seqs.append(seq)
        if mm is not None:
            self.encoder_cache.acquire(mm.hashes)
        self._groups[request_id] = req
        for seq in req.seqs:
            self._requests[seq.request_id] = seq
            self.scheduler.add(seq)

    def _expand_images(self, ids: list[int], images: list) -> tuple[list[int], MMRequest | None]:
        """-> (prompt ids with each `<|image|>` expanded, the request's images or None)."""
        if self.mm is None:
            if images:
                raise ValueError(f"{len(images)} image(s) given but this engine takes no images: {self._mm_error}")
            return ids, None
        ids, mm = self.mm.process(ids, images)
        return ids, (mm if mm.images else None)

    def _sample_state(self, req: _Request, i: int) -> _SeqState:
        p = req.params.for_sample(i)
        detok = None
        if self.tokenizer is not None:
            from amd_llama4.engine.detokenizer import IncrementalDetokenizer

            detok = IncrementalDetokenizer(self.tokenizer, p, req.prompt_token_ids)
        matcher = None if p.structured_outputs is None else self._structured_backend().matcher(p.structured_outputs)
        return _SeqState(req, i, SamplingState(p, req.prompt_token_ids, self.eos_ids, matcher=matcher), detok,
                         [] if req.params.logprobs is not None else None,
                         0.0 if p.logprobs is not None else None)

    def _structured_backend(self):
        """The grammar backend (tokenizer bridge + compile cache), built once. Under tensor
        parallelism rank 0 has its own (it samples); this one advances the driver's matchers, which
        decide when a sequence ends."""
        if self._structured is None:
            from amd_llama4.structured.backend import StructuredBackend

            self._structured = StructuredBackend(self.tokenizer, self.eos_ids)
        return self._structured

    def abort(self, request_id: str) -> RequestOutput | None:
        """End every sample of the request still running; -> their final output (None: unknown id)."""
        req = self._groups.pop(request_id, None)
        if req is None:
            return None
        ended = [s for s in req.seqs if s.state.finish_reason is None]
        for seq in ended:
            self._end(seq, "abort")
        return self._request_output(req, ended)

    def _end(self, seq: Sequence, reason: str) -> None:
        """Finish a sample outside a step (abort): free its blocks now."""
        seq.state.finish_reason = reason
        if self._requests.pop(seq.request_id, None) is not None:
            self.scheduler.finish(seq)
        if seq.state.detok is not None:
            self._add_text(seq.state, seq.state.detok.finish())

    def _fail_group(self, req: _Request) -> None:
        """A sample failed (finish_reason "error"): the request fails. Waiting samples end now; a
        running one may be in the current step, so it ends as "abort" at its next token (_append)."""
        req.failed = True
        for seq in req.seqs:
            if seq.state.finish_reason is None and seq in self.scheduler.waiting:
                self._end(seq, "abort")

    def shutdown(self) -> None:
        if self.parallel:
            self.runner.shutdown()

    def has_unfinished(self) -> bool:
        return self.scheduler.has_work()

    def stats(self) -> dict:
        """Engine gauges and counters for /metrics; prefix-cache counters (tokens) are 0 until the
        cache reports them."""
        return {"num_running": len(self.scheduler.running), "num_waiting": len(self.scheduler.waiting),
                "num_requests": len(self._groups), "prefix_cache_queries": 0, "prefix_cache_hits": 0,
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
        # whole prompt (or the last token) computed this step: sample the next one (max_tokens=0:
        # the request ends after its prompt instead)
        done = [s.num_computed + n == len(s.token_ids) for s, n in zip(sched.seqs, sched.num_tokens)]
        sample = [d and s.state.sampling.params.max_tokens != 0 for s, d in zip(sched.seqs, done)]
        # prefill pieces whose request asked for prompt logprobs (sample 0 holds them)
        full = [i for i, s in enumerate(sched.seqs) if s.state.index == 0 and s.num_computed < s.num_prompt
                and s.state.request.prompt_logprobs is not None]
        results, prompt_logits = self._execute(sched.seqs, sched.num_tokens, sample, full)
        for i, logits in zip(full, prompt_logits):
            self._prompt_logprobs(sched.seqs[i], logits)
        for seq, n in zip(sched.seqs, sched.num_tokens):
            seq.num_computed += n
        results = iter(results)
        for seq, d, smp in zip(sched.seqs, done, sample):
            if not d:
                continue
            if smp:
                self._append(seq, next(results))
            else:
                seq.state.finish_reason = "length"
                if seq.state.detok is not None:
                    self._add_text(seq.state, seq.state.detok.finish())
            outputs.append(self._output(seq))
            if seq.state.finish_reason is not None:
                self._requests.pop(seq.request_id, None)
                self.scheduler.finish(seq)
        return outputs

    def _prompt_logprobs(self, seq: Sequence, logits: torch.Tensor) -> None:
        """logits: fp32 [n, V] of the piece's rows, positions start .. start+n-1; row j predicts
        position start+j+1. One device->host copy per piece."""
        req, start = seq.state.request, seq.num_computed
        targets = seq.token_ids[start + 1:min(start + logits.shape[0] + 1, seq.num_prompt)]
        if not targets:
            return
        lp = torch.log_softmax(logits[:len(targets)].float(), dim=-1)  # [m, V]
        ids = torch.tensor(targets, dtype=torch.long, device=lp.device)
        chosen = lp.gather(1, ids.unsqueeze(1)).squeeze(1)  # [m]
        k = min(req.params.prompt_logprobs, lp.shape[1])
        tv, ti = lp.topk(k, dim=-1) if k else (lp[:, :0], lp[:, :0].long())  # [m, k]
        packed = torch.cat([chosen.double(), ti.double().reshape(-1), tv.double().reshape(-1)]).tolist()
        m = len(targets)
        top_i, top_v = packed[m:m + m * k], packed[m + m * k:]
        name = self.tokenizer.token_text if self.tokenizer is not None else str
        for j, tok in enumerate(targets):
            pos = start + 1 + j
            if req.prompt_logprobs[pos] is None:
                req.prompt_lps_left -= 1
            alts = zip(top_i[j * k:(j + 1) * k], top_v[j * k:(j + 1) * k])
            req.prompt_logprobs[pos] = (Logprob(tok, packed[j], name(tok)),
                                        [Logprob(int(t), v, name(int(t))) for t, v in alts])

    def _append(self, seq: Sequence, res) -> None:
        st = seq.state
        tok = res.token_id
        seq.token_ids.append(tok)
        st.sampling.append(tok)
        if st.cumulative_logprob is not None and res.logprob is not None:
            st.cumulative_logprob += res.logprob
        if st.logprobs is not None:
            name = self.tokenizer.token_text if self.tokenizer is not None else str
            st.logprobs.append((Logprob(tok, res.logprob, name(tok)),
                                [Logprob(i, lp, name(i)) for i, lp in (res.top_logprobs or [])]))
        finished, reason, stop_reason = st.sampling.check_stop(tok)
        if st.detok is not None:
            self._add_text(st, st.detok.add(tok))
            if st.detok.stopped_by is not None:
                finished, reason, stop_reason = True, "stop", st.detok.stopped_by
        if not finished and len(seq.token_ids) >= self.max_model_len:
            finished, reason = True, "length"
        if not finished and st.request.failed:
            finished, reason = True, "abort"
        if finished:
            st.finish_reason, st.stop_reason = reason, stop_reason
            if st.detok is not None:
                self._add_text(st, st.detok.finish())

    @staticmethod
    def _add_text(st: _SeqState, piece: str) -> None:
        if piece and st.request.params.output_kind is RequestOutputKind.DELTA:
            st.new_text.append(piece)

    def _output(self, seq: Sequence) -> RequestOutput:
        """The request's output after `seq` got a token or ended: DELTA, this sample's new part;
        CUMULATIVE, every sample so far (the n best by cumulative logprob once all finished)."""
        req = seq.state.request
        if seq.state.finish_reason == "error" and not req.failed:
            self._fail_group(req)
        return self._request_output(req, [seq])

    def _request_output(self, req: _Request, changed: list[Sequence]) -> RequestOutput:
        done = all(s.state.finish_reason is not None for s in req.seqs)
        if done:
            self._groups.pop(req.request_id, None)
            if req.mm is not None:  # no sample left to recompute the prompt: its images may go
                self.encoder_cache.release(req.mm.hashes)
                req.mm = None
        p = req.params
        if p.output_kind is RequestOutputKind.DELTA:
            outs = [self._delta(s) for s in changed]
        else:
            outs = [self._cumulative(s) for s in req.seqs]
            if done:
                outs = select_best(outs, p.n)
        out = RequestOutput(req.request_id, req.prompt, req.prompt_token_ids, outs, finished=done)
        if req.prompt_logprobs is not None and req.prompt_lps_left == 0:
            # once complete: in the first output after that (DELTA), in every one (CUMULATIVE)
            if not req.prompt_lps_sent or p.output_kind is RequestOutputKind.CUMULATIVE:
                out.prompt_logprobs = list(req.prompt_logprobs)
                req.prompt_lps_sent = True
        return out

    @staticmethod
    def _cumulative(seq: Sequence) -> CompletionOutput:
        st = seq.state
        text = st.detok.text if st.detok is not None else ""
        return CompletionOutput(st.index, text, seq.token_ids[seq.num_prompt:], st.finish_reason, st.stop_reason,
                                list(st.logprobs) if st.logprobs is not None else None, st.cumulative_logprob)

    @staticmethod
    def _delta(seq: Sequence) -> CompletionOutput:
        """O(new tokens): the ids, text pieces and logprob entries since this sample's last output."""
        st = seq.state
        start = seq.num_prompt + st.sent_tokens
        st.sent_tokens = len(seq.token_ids) - seq.num_prompt
        text = "".join(st.new_text)
        st.new_text.clear()
        lps = st.logprobs
        if lps is not None:
            st.logprobs = []
        return CompletionOutput(st.index, text, seq.token_ids[start:], st.finish_reason, st.stop_reason, lps,
                                st.cumulative_logprob)

    def _execute(self, seqs: list[Sequence], num_tokens: list[int], sample: list[bool],
                 full: list[int]) -> tuple[list, list[torch.Tensor]]:
        """Run one step; -> (a SampleResult per sequence with sample=True, in order; fp32 logits of
        every new row of seqs[full] (prompt logprobs; tp=1 only)). Sampling runs on
        the model's device either way: here (tp=1), or on rank 0, which returns only the sampled
        ids and logprobs; the workers get the step as block-table changes (engine/tp/wire.py)."""
        states = [s.state.sampling for s, smp in zip(seqs, sample) if smp]
        if self.parallel:
            if getattr(self, "_wire", None) is None:
                from amd_llama4.engine.tp.wire import StepEncoder

                self._wire = StepEncoder()
            live = {s.arrival for s in self._requests.values()}
            msg = self._wire.encode(seqs, num_tokens, sample, [s.state.sampling for s in seqs], live,
                                    [s.state.request.mm for s in seqs])
            return self.runner.execute(msg), []
        # image features for the pieces holding <|patch|> tokens (encoded at most once per image)
        feats = step_image_features([(s.state.request.mm, s.num_computed, n) for s, n in zip(seqs, num_tokens)],
                                    self.encoder_cache, self.model)
        items = [StepItem(s.blocks, s.token_ids[s.num_computed:s.num_computed + n], s.num_computed, f)
                 for s, n, f in zip(seqs, num_tokens, feats)]
        # one ragged step (no padding); the LM head runs only on the sampled rows (and prompt rows
        # asked for); prefill pieces only: K/V written, no logits. rows=None when every item samples
        # (decodes): no subset to index, and the CPU native step computes the logits itself
        rows = None if all(sample) else [i for i, smp in enumerate(sample) if smp]
        logits, prompt_logits = self.runner.execute_with_prompt(items, rows=rows, full=full)  # [n, V]
        return (self.sampler(logits, states) if states else []), prompt_logits
