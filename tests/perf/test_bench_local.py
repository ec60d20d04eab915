"""perf/bench_local.py end to end on a tiny Scout-shaped model: llama.cpp's own converter writes the
GGUF, both engines decode greedily, and the F32 prompt logits agree. Skips without llama-cpp-python
(a perf extra built from source) or without the converter's sdist (no network, no /tmp/wheels)."""
import argparse

import pytest

from tests.perf.conftest import load_perf_module

TINY = dict(hidden_size=128, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, head_dim=32,
            intermediate_size=96, intermediate_size_mlp=192, num_local_experts=4)


def test_bad_types_name_the_flag():
    bench = load_perf_module("bench_local")
    with pytest.raises(SystemExit, match="--types: unknown"):
        bench.main(["--types", "f32,q5_1"])


def test_convert_rejects_types_the_converter_cannot_write(tmp_path):
    local = load_perf_module("local_model")
    with pytest.raises(ValueError, match="outtype 'q4_0'"):
        local.convert_to_gguf(tmp_path, tmp_path / "x.gguf", "q4_0")


@pytest.mark.slow
def test_bench_local_tiny_f32_matches_llama_cpp(tmp_path):
    pytest.importorskip("llama_cpp")
    local = load_perf_module("local_model")
    bench = load_perf_module("bench_local")
    try:
        paths = local.build_all(tmp_path, ("f32",), **TINY)
    except RuntimeError as e:
        if "pip download failed" in str(e):
            pytest.skip(f"llama.cpp's converter is not available offline: {e}")
        raise
    args = argparse.Namespace(prompt_len=12, new_tokens=6, repeats=1, threads=1, enforce_eager=False)
    prompt = list(range(20, 32))
    row = bench.bench_type("f32", paths, args, prompt)
    # llama.cpp keeps an f16 KV cache: ~1e-3 of the logit scale, far below a wrong weight or layout
    assert row["f32_logits_rel_diff"] < 5e-3, row
    assert row["f32_argmax_agree"] == "12/12", row
    assert row["greedy_prefix_agree"] == "6/6", row
    assert row["ours_decode_tok_s"] > 0 and row["cpp_decode_tok_s"] > 0
