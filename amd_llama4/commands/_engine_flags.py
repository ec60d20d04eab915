"""The engine flags `generate`, `chat` and `serve` share (vLLM's names). Every default is None:
unset flags are left out, so EngineArgs' defaults (device/dtype "auto", ...) apply.
Not a subcommand: the leading underscore keeps cli.py from registering it."""
from __future__ import annotations

import argparse

# (flag, EngineArgs field, argparse options)
_FLAGS = (
    ("--device", "device", dict(help="auto (the GPU torch sees: ROCm or CUDA, else cpu) | cpu | cuda[:N]")),
    ("--dtype", "dtype", dict(help="auto (GPU: the checkpoint's torch_dtype; CPU: float32) | bfloat16 | "
                                   "float16 | float32")),
    ("--kv-cache-dtype", "kv_cache_dtype", dict(choices=["auto", "fp8"], help="auto (= dtype) | fp8")),
    ("--quantization", "quantization", dict(choices=["fp8", "int4"], help="online: fp8 (weights + activations) "
                                            "| int4 (weights only, group 128; pre-quantised checkpoints need no flag)")),
    ("--cpu-offload-experts", "cpu_offload_experts",
     dict(metavar="all|N", help="routed experts of all / the first N MoE layers stay in host memory and run on "
                                "the CPU (llama.cpp's --n-cpu-moe); attention and shared expert stay on the GPU")),
    ("--max-model-len", "max_model_len", dict(type=int, help="prompt + output tokens per request")),
    ("--max-num-seqs", "max_num_seqs", dict(type=int, help="sequences batched per engine step")),
    ("--max-num-batched-tokens", "max_num_batched_tokens", dict(type=int, help="tokens per engine step "
                                                                                "(the profiled forward on GPU)")),
    ("--gpu-memory-utilization", "gpu_memory_utilization",
     dict(type=float, help="fraction of each GPU for weights + activations + KV cache (default 0.9)")),
    ("--kv-cache-memory-bytes", "kv_cache_memory_bytes",
     dict(type=int, help="KV cache bytes per GPU (or on CPU), instead of measuring free memory")),
    ("--enforce-eager", "enforce_eager", dict(action="store_true", default=None,
                                              help="GPU: no HIP/CUDA graphs for the decode step")),
    ("--enable-prefix-caching", "enable_prefix_caching",
     dict(action=argparse.BooleanOptionalAction,
          help="reuse the KV blocks of prompt prefixes seen before (default on; --no-enable-prefix-caching: off)")),
    ("--tensor-parallel-size", "tensor_parallel_size", dict(type=int, help="GPUs per engine")),
    ("--expert-parallel", "expert_parallel", dict(action="store_true", default=None,
                                                  help="split MoE experts across tensor-parallel ranks")),
    ("--mm-encoder-tp-mode", "mm_encoder_tp_mode",
     dict(choices=["weights", "data"], help="images under tensor parallelism: weights (default: every rank "
                                            "encodes every image) | data (ranks split a step's images)")),
)


def add_engine_flags(p) -> None:
    for flag, dest, opts in _FLAGS:
        names = (flag, "--tp") if dest == "tensor_parallel_size" else (flag,)
        p.add_argument(*names, dest=dest, **{"default": None, **opts})


def engine_kwargs(args) -> dict:
    """The engine flags that were given, as EngineArgs keyword arguments."""
    return {dest: getattr(args, dest) for _, dest, _ in _FLAGS if getattr(args, dest) is not None}
