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
    "auto": the checkpoint's torch_dtype on GPU, float32 on CPU. Prompts are strings, token-id lists or
    vLLM's dicts {"prompt": str | "prompt_token_ids": [...], "multi_modal_data": {"image": img | [imgs]}}
    (one `<|image|>` in the prompt per image). `generate` returns one RequestOutput per prompt with
    params.n CompletionOutputs (index 0..n-1). `chat` takes content parts {"type": "image", "image": img}
    and {"type": "image_url", "image_url": {"url": "data:..."}}."""

    def __init__(self, model: str, **kwargs):
        self.engine = LLMEngine(EngineArgs(model=str(model), **kwargs))
        self._ids = itertools.count()

    def shutdown(self) -> None:
        """Stops tensor-parallel workers (no-op for tp=1)."""
        self.engine.shutdown()

    @property
    def tokenizer(self):
        return self.engine.tokenizer

    def generate(self, prompts: str | list[int] | dict | Seq[str | list[int] | dict],
                 sampling_params: SamplingParams | Seq[SamplingParams] | None = None) -> list[RequestOutput]:
        if isinstance(prompts, (str, dict)) or (isinstance(prompts, list) and prompts and isinstance(prompts[0], int)):
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
                prompt, mm = _unpack(p)
                self.engine.add_request(rid, prompt, replace(sp, output_kind=RequestOutputKind.DELTA),
                                        multi_modal_data=mm)
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
        prompts = []
        for c in convs:
            ids = self.tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=True)
            images = chat_images(c)
            prompts.append({"prompt_token_ids": ids, "multi_modal_data": {"image": images}} if images else ids)
        return self.generate(prompts, sampling_params)


def _unpack(p) -> tuple[str | list[int], dict | None]:
    """A generate() prompt -> (text or ids, multi_modal_data or None)."""
    if not isinstance(p, dict):
        return p, None
    unknown = sorted(set(p) - {"prompt", "prompt_token_ids", "multi_modal_data"})
    if unknown or ("prompt" in p) == ("prompt_token_ids" in p):
        raise ValueError(f"prompt dict: needs exactly one of 'prompt' (text) or 'prompt_token_ids', plus optional "
                         f"'multi_modal_data'; got keys {sorted(p)}")
    return (p["prompt"] if "prompt" in p else list(p["prompt_token_ids"])), p.get("multi_modal_data")


def chat_images(messages: list[dict]) -> list:
    """The images of a conversation's content parts, in order (the template's `<|image|>` order):
    {"type": "image", "image": PIL image} or {"type": "image_url", "image_url": {"url": ...}}."""
    out = []
    for i, m in enumerate(messages):
        content = m.get("content") if isinstance(m, dict) else None
        if not isinstance(content, list):
            continue
        for j, part in enumerate(content):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "image":
                if part.get("image") is None:
                    raise ValueError(f"messages[{i}].content[{j}]: an 'image' part needs the image under 'image'")
                out.append(part["image"])
            elif kind == "image_url":
                url = part.get("image_url")
                url = url.get("url") if isinstance(url, dict) else url
                if not isinstance(url, str):
                    raise ValueError(f"messages[{i}].content[{j}].image_url.url: must be a string")
                out.append(_load_image_url(url, f"messages[{i}].content[{j}]"))
    return out


def _load_image_url(url: str, where: str):
    # the server's decoder with its default limits: data: URLs; no remote fetch offline
    from amd_llama4.multimodal.media import MediaError, MediaLimits, load_image

    try:
        return load_image(url, MediaLimits())
    except MediaError as e:
        raise ValueError(f"{where}: {e}") from e
