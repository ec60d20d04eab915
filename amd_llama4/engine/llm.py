"""`LLM`: offline batched generation with vLLM's API shape."""
from __future__ import annotations

import itertools
from dataclasses import replace
from typing import Sequence as Seq

from amd_llama4.engine.llm_engine import EngineArgs, LLMEngine
from amd_llama4.engine.outputs import OutputAccumulator, RequestOutput
from amd_llama4.engine.sampling_params import RequestOutputKind, SamplingParams


class LLM:
    """LLM(model="tiny-scout" | checkpoint folder, device="auto", dtype="auto", kv_cache_dtype="auto",
    max_model_len=..., max_num_seqs=..., gpu_memory_utilization=0.9, kv_cache_memory_bytes=None, ...):
    any EngineArgs field. device "auto": the GPU torch sees (ROCm or CUDA), else the CPU; dtype
    "auto": the checkpoint's torch_dtype on GPU, float32 on CPU. Prompts are strings or token-id lists.
    `generate` returns one RequestOutput per prompt with params.n CompletionOutputs (index 0..n-1)."""

    def __init__(self, model: str, **kwargs):
        self.engine = LLMEngine(EngineArgs(model=str(model), **kwargs))
        self._ids = itertools.count()

    def shutdown(self) -> None:
        """Stops tensor-parallel workers (no-op for tp=1)."""
        self.engine.shutdown()

    @property
    def tokenizer(self):
        return self.engine.tokenizer

    def generate(self, prompts: str | list[int] | Seq[str | list[int]],
                 sampling_params: SamplingParams | Seq[SamplingParams] | None = None) -> list[RequestOutput]:
        if isinstance(prompts, str) or (isinstance(prompts, list) and prompts and isinstance(prompts[0], int)):
            prompts = [prompts]
        prompts = list(prompts)
        if sampling_params is None or isinstance(sampling_params, SamplingParams):
            sampling_params = [sampling_params or SamplingParams()] * len(prompts)
        if len(sampling_params) != len(prompts):
            raise ValueError(f"{len(sampling_params)} sampling_params for {len(prompts)} prompts")
        order: list[tuple[str, int]] = []  # (request id, n)
        accs: dict[str, OutputAccumulator] = {}
        try:
            for p, sp in zip(prompts, sampling_params):
                rid = f"llm-{next(self._ids)}"
                # DELTA: each step hands over only the new tokens; whole outputs are built once here
                self.engine.add_request(rid, p, replace(sp, output_kind=RequestOutputKind.DELTA))
                order.append((rid, sp.n))
                accs[rid] = OutputAccumulator()
            while self.engine.has_unfinished():
                for out in self.engine.step():
                    acc = accs.get(out.request_id)
                    if acc is not None and not (acc.request is not None and acc.request.finished):
                        acc.add(out)
        finally:  # an exception (or Ctrl-C) must not leave requests holding KV blocks
            for rid, _ in order:
                acc = accs.get(rid)
                if acc is None or acc.request is None or not acc.request.finished:
                    self.engine.abort(rid)
        final = [accs[rid].result(n) for rid, n in order]
        errors = [r.error for r in final if r.error]
        if errors:
            raise RuntimeError(f"generation failed: {errors[0]}")
        return final

    def chat(self, messages: list[dict] | list[list[dict]],
             sampling_params: SamplingParams | None = None) -> list[RequestOutput]:
        if self.tokenizer is None:
            raise ValueError("chat needs a tokenizer (tokenizer.json + chat template in the model folder)")
        convs = [messages] if messages and isinstance(messages[0], dict) else list(messages)
        prompts = [self.tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=True) for c in convs]
        return self.generate(prompts, sampling_params)
