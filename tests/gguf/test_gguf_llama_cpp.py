"""llama.cpp (llama-cpp-python) reads the GGUF we export and computes our logits.

Skipped without llama-cpp-python (a perf extra built from source: CI need not build llama.cpp).
The model has llama.cpp's fixed llama4 values (chunk 8192, temperature floor 8192 / scale 0.1, NoPE
every 4th layer, QK norm), a llama3 rope scaling with a blend band, dense and MoE layers. llama.cpp
keeps its KV cache in f16 and, with Q8_0 weights, quantises activations to 8 bits on the CPU, hence
the tolerances (relative to the largest logit).
"""
import shutil

import numpy as np
import pytest
import torch

from amd_llama4 import Llama4Config, load_model
from amd_llama4.engine.tokenizer import tiny_tokenizer_dir
from amd_llama4.tools.gguf_export import export_gguf
from tests.hf_reference import save_hf

llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python not installed (perf extra)")

CFG = dict(vocab_size=512, hidden_size=256, num_attention_heads=4, num_key_value_heads=2, head_dim=64,
           intermediate_size=128, intermediate_size_mlp=192, num_hidden_layers=4, num_local_experts=4,
           num_experts_per_tok=1, interleave_moe_layer_step=2, use_qk_norm=True, rope_theta=10000.0,
           rope_scaling=dict(factor=16.0, low_freq_factor=1.0, high_freq_factor=4.0,
                             original_max_position_embeddings=64),
           attention_chunk_size=8192, floor_scale=8192, attn_scale=0.1, max_position_embeddings=4096,
           bos_token_id=1, eos_token_id=[2, 3, 4], pad_token_id=0)
# max |ours - llama.cpp| / max |logit|, and the fraction of positions whose top-1 token must agree
# (measured: f32 4.7e-4 / 1.0, f16 7.9e-4 / 1.0, q8_0 1.9e-2 / 0.92)
TOL = {"f32": (2e-3, 1.0), "f16": (3e-3, 1.0), "q8_0": (5e-2, 0.8)}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    pytest.importorskip("transformers")
    d = tmp_path_factory.mktemp("gguf_llama_cpp") / "hf"
    save_hf(Llama4Config(**CFG), d, seed=11)
    for f in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        shutil.copy(tiny_tokenizer_dir() / f, d / f)
    return d


def llama_cpp_logits(path, ids: list[int]) -> np.ndarray:
    llm = llama_cpp.Llama(model_path=str(path), logits_all=True, n_threads=2, n_ctx=64, n_batch=64, verbose=False)
    try:
        llm.eval(ids)
        return np.array(llm.scores[: len(ids)], dtype=np.float32)
    finally:
        llm.close()


@pytest.mark.parametrize("outtype", ["f32", "f16", "q8_0"])
def test_llama_cpp_reads_our_export(folder, tmp_path, outtype):
    path = export_gguf(folder, tmp_path / f"ours-{outtype}.gguf", outtype)
    ids = torch.randint(5, CFG["vocab_size"], (1, 24), generator=torch.Generator().manual_seed(2))
    ours = load_model(path, progress=False, device="cpu", dtype=torch.float32)(ids)[0].numpy()
    theirs = llama_cpp_logits(path, ids[0].tolist())
    assert theirs.shape == ours.shape
    rel = float(np.abs(theirs - ours).max() / np.abs(ours).max())
    agree = float((theirs.argmax(-1) == ours.argmax(-1)).mean())
    tol, min_agree = TOL[outtype]
    assert rel <= tol and agree >= min_agree, f"{outtype}: max rel diff {rel:.3g} (tol {tol}), top-1 agree {agree:.2f}"


def test_llama_cpp_tokenizes_like_our_gguf_tokenizer(folder, tmp_path):
    from amd_llama4.engine.tokenizer import Tokenizer

    path = export_gguf(folder, tmp_path / "tok.gguf", "q8_0")
    ours = Tokenizer.from_pretrained(path)
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=64, vocab_only=True, verbose=False)
    try:
        for text in ["Hello world!  It's 12345 tests\n\n  ok", "def f(x):\n    return x**2  # ünïcode",
                     "<|header_start|>user<|header_end|>\n\nhi<|eot|>"]:
            assert llm.tokenize(text.encode(), add_bos=True, special=True) == ours.encode(text), text
        assert llm.token_bos() == ours.bos_token_id and llm.token_eos() in ours.eos_token_ids
    finally:
        llm.close()
