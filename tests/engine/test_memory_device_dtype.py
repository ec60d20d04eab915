"""device="auto" / dtype="auto": the one resolve_dtype, the checkpoint's torch_dtype, and the flags
of generate/chat/serve (and Ray Serve args) that carry device and the memory knobs to EngineArgs."""
import json

import pytest
import torch

from amd_llama4.config import Llama4Config, preset
from amd_llama4.platform import CPU_AUTO_DTYPE, parse_dtype, resolve_dtype


def test_auto_dtype_is_the_checkpoints_on_gpu_and_fp32_on_cpu():
    bf16_ckpt, fp16_ckpt = preset("tiny-scout", torch_dtype="bfloat16"), preset("tiny-scout", torch_dtype="float16")
    assert CPU_AUTO_DTYPE == torch.float32
    assert resolve_dtype("auto", "cpu", bf16_ckpt) == torch.float32
    assert resolve_dtype("auto", torch.device("cuda", 3), fp16_ckpt) == torch.float16
    assert resolve_dtype("auto", "cuda", bf16_ckpt) == torch.bfloat16
    assert resolve_dtype(None, "meta", fp16_ckpt) == torch.float16  # header-only loads size like the GPU
    assert resolve_dtype("auto", "cuda", preset("tiny-scout")) == torch.bfloat16  # presets name none
    assert resolve_dtype("bf16", "cpu", fp16_ckpt) == torch.bfloat16  # explicit wins everywhere
    assert resolve_dtype(torch.float16, "cuda", bf16_ckpt) == torch.float16
    with pytest.raises(ValueError, match=r"torch_dtype 'int8'.*pass dtype="):
        resolve_dtype("auto", "cuda", preset("tiny-scout", torch_dtype="int8"))
    with pytest.raises(ValueError, match=r"dtype 'auto' not in .*resolve_dtype"):
        parse_dtype("auto")


@pytest.mark.parametrize("key,where", [("torch_dtype", "outer"), ("torch_dtype", "text_config"),
                                       ("dtype", "outer"), ("dtype", "text_config")])
def test_config_reads_torch_dtype_of_released_and_transformers5_layouts(tmp_path, key, where):
    text = {k: v for k, v in preset("tiny-scout").to_hf_dict().items() if k != "model_type"}
    raw = {"model_type": "llama4", "text_config": text}
    (raw if where == "outer" else text)[key] = "bfloat16"
    (tmp_path / "config.json").write_text(json.dumps(raw))
    cfg = Llama4Config.from_pretrained(tmp_path)
    assert cfg.torch_dtype == "bfloat16"
    assert cfg.to_hf_dict()["torch_dtype"] == "bfloat16"
    assert "torch_dtype" not in preset("tiny-scout").to_hf_dict()  # nothing invented for presets


def test_cli_engine_flags_reach_engine_args_and_unset_ones_keep_engine_defaults():
    from amd_llama4.cli import build_parser
    from amd_llama4.commands._engine_flags import engine_kwargs
    from amd_llama4.engine.llm_engine import EngineArgs

    p = build_parser()
    for cmd in (["generate", "hi"], ["chat"], ["serve", "--model", "m"]):
        args = p.parse_args(cmd)
        assert {k: v for k, v in engine_kwargs(args).items() if k != "model"} == {}
    d = EngineArgs(model="m")
    assert (d.device, d.dtype, d.gpu_memory_utilization, d.kv_cache_memory_bytes, d.enforce_eager) == \
        ("auto", "auto", 0.9, None, False)
    args = p.parse_args(["serve", "--model", "m", "--device", "cuda:1", "--dtype", "bfloat16",
                         "--gpu-memory-utilization", "0.8", "--kv-cache-memory-bytes", "1000000", "--enforce-eager",
                         "--max-num-batched-tokens", "4096", "--tp", "4"])
    kw = engine_kwargs(args)
    assert kw == dict(device="cuda:1", dtype="bfloat16", gpu_memory_utilization=0.8, kv_cache_memory_bytes=1000000,
                      enforce_eager=True, max_num_batched_tokens=4096, tensor_parallel_size=4)
    EngineArgs(model="m", **kw)  # every flag is an EngineArgs field


def test_ray_serve_args_coerce_the_memory_and_device_knobs():
    pytest.importorskip("ray.serve")
    from amd_llama4.serve.deployment import split_args

    engine, _ = split_args({"model": "m", "device": "auto", "gpu_memory_utilization": "0.85",
                            "kv_cache_memory_bytes": "2000000", "enforce_eager": "true",
                            "max_num_batched_tokens": "8192"})
    assert engine == dict(model="m", device="auto", gpu_memory_utilization=0.85, kv_cache_memory_bytes=2000000,
                          enforce_eager=True, max_num_batched_tokens=8192)
