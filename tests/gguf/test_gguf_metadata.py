"""Metadata pieces: llama3 rope scaling recovered from llama.cpp's rope_freqs divisors, and tokenizer
metadata errors naming the file and key."""
import numpy as np
import pytest
import torch

from amd_llama4.config import RopeScaling
from amd_llama4.gguf import GGUFError
from amd_llama4.gguf.reader import rope_scaling_from_factors
from amd_llama4.ops.rope import rope_inv_freq

gguf = pytest.importorskip("gguf")

CASES = {  # (head_dim, theta, scaling)
    "scout (no blend band)": (128, 500000.0, RopeScaling(16.0, 1.0, 1.0, 8192)),
    "blend band": (64, 10000.0, RopeScaling(16.0, 1.0, 4.0, 64)),
    "old scout (factor 8, band)": (128, 500000.0, RopeScaling(8.0, 1.0, 4.0, 8192)),
    "small head": (16, 10000.0, RopeScaling(8.0, 1.0, 4.0, 32)),
}


def _divisors(head_dim, theta, rs):
    return (rope_inv_freq(head_dim, theta, None) / rope_inv_freq(head_dim, theta, rs)).numpy()


@pytest.mark.parametrize("name", sorted(CASES))
def test_rope_scaling_recovered_from_divisors(name):
    head_dim, theta, rs = CASES[name]
    got = rope_scaling_from_factors(_divisors(head_dim, theta, rs), theta, head_dim, "m.gguf")
    assert got.factor == rs.factor
    torch.testing.assert_close(rope_inv_freq(head_dim, theta, got), rope_inv_freq(head_dim, theta, rs),
                               rtol=1e-6, atol=0)


def test_rope_divisors_all_one_is_no_scaling_and_junk_is_an_error():
    assert rope_scaling_from_factors(np.ones(32), 10000.0, 64, "m.gguf") is None
    junk = np.linspace(1.0, 9.0, 32)[::-1].copy()  # decreasing: no llama3 scaling makes it
    with pytest.raises(GGUFError, match=r"m\.gguf: tensor 'rope_freqs\.weight' is not a llama3 rope scaling"):
        rope_scaling_from_factors(junk, 10000.0, 64, "m.gguf")
    with pytest.raises(GGUFError, match=r"m\.gguf: tensor 'rope_freqs\.weight' has 8 values, expected 32"):
        rope_scaling_from_factors(np.ones(8), 10000.0, 64, "m.gguf")


def _vocab_file(path, model="gpt2", pre="llama-bpe"):
    w = gguf.GGUFWriter(str(path), "llama4")
    w.add_tokenizer_model(model)
    w.add_tokenizer_pre(pre)
    w.add_token_list(["a", "b", "ab", "<|eot|>"])
    w.add_token_types([1, 1, 1, 3])
    w.add_token_merges(["a b"])
    w.add_eos_token_id(3)
    w.write_header_to_file(), w.write_kv_data_to_file(), w.write_tensors_to_file(), w.close()
    return path


def test_tokenizer_metadata(tmp_path):
    from amd_llama4.engine.tokenizer import Tokenizer

    tok = Tokenizer.from_pretrained(_vocab_file(tmp_path / "ok.gguf"))
    assert tok.encode("abab<|eot|>", add_bos=False) == [2, 2, 3] and tok.eos_token_ids == [3]
    assert tok.decode([2, 3]) == "ab" and tok.is_special(3)
    with pytest.raises(GGUFError, match=r"spm\.gguf: metadata 'tokenizer\.ggml\.model' is 'llama'"):
        Tokenizer.from_pretrained(_vocab_file(tmp_path / "spm.gguf", model="llama"))
    with pytest.raises(GGUFError, match=r"pre\.gguf: metadata 'tokenizer\.ggml\.pre' is 'qwen2'"):
        Tokenizer.from_pretrained(_vocab_file(tmp_path / "pre.gguf", pre="qwen2"))

