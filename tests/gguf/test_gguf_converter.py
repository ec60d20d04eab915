"""GGUFs written by llama.cpp's own convert_hf_to_gguf.py load with transformers' logits.

One random transformers Llama4ForCausalLM (dense and MoE layers, llama3 rope scaling with a blend
band, QK norm, a NoPE layer) converted once to F32/F16/BF16/Q8_0 by the converter; Q4_0/Q4_K/Q6_K
made from its F32 file by gguf.quants. Each loads with logits equal to transformers run on the same
weights rounded as the file stores them (fp32 tolerance), and within a quantisation bound of the
unrounded model. The config has llama.cpp's fixed llama4 values (chunk 8192, temperature floor 8192,
scale 0.1) so the metadata describes it fully.
"""
import pytest
import torch

from amd_llama4 import Llama4Config, load_model
from amd_llama4.engine.tokenizer import Tokenizer, tiny_tokenizer_dir
from amd_llama4.gguf import read_config
from tests.gguf.llama_cpp_files import convert, requantize, set_from_file
from tests.hf_reference import save_hf

pytestmark = pytest.mark.slow  # one converter process (~20 s on 2 loaded cores), then fast checks

# in-features 256 everywhere but the dense down_proj (80: not whole 32-blocks, so F16 in Q8_0 files)
CFG = dict(vocab_size=512, hidden_size=256, num_attention_heads=4, num_key_value_heads=2, head_dim=64,
           intermediate_size=256, intermediate_size_mlp=80, num_hidden_layers=4, num_local_experts=4,
           num_experts_per_tok=1, interleave_moe_layer_step=2, use_qk_norm=True, rope_theta=10000.0,
           rope_scaling=dict(factor=16.0, low_freq_factor=1.0, high_freq_factor=4.0,
                             original_max_position_embeddings=64),
           attention_chunk_size=8192, floor_scale=8192, attn_scale=0.1, max_position_embeddings=4096,
           bos_token_id=1, eos_token_id=[2, 3, 4], pad_token_id=0, tie_word_embeddings=False)
# median over tokens of |logits - unrounded model's| / |unrounded model's|: a sanity bound on top of
# the exact check (a top-1 router of 4 experts flips on some rounded weights, so not the max).
# Measured here: f16 7.8e-4, bf16 6.8e-3, q8_0 2.2e-2, q6_k 6.7e-2, q4_k 0.29, q4_0 0.41 (random
# weights round badly at 4 bits); unrelated logits give ~1.4.
BOUND = {"f32": 1e-5, "f16": 3e-3, "bf16": 0.02, "q8_0": 0.06, "q6_k": 0.15, "q4_k": 0.6, "q4_0": 0.8}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    import shutil

    pytest.importorskip("gguf")
    pytest.importorskip("transformers")
    d = tmp_path_factory.mktemp("gguf_conv")
    hf_dir = d / "hf"
    hf = save_hf(Llama4Config(**CFG), hf_dir, seed=3)
    for f in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        shutil.copy(tiny_tokenizer_dir() / f, hf_dir / f)
    out = convert(hf_dir, d)
    out["q4_0"] = requantize(out["f32"], d / "model-q4_0.gguf", "q4_0")
    return hf, hf_dir, out


@pytest.fixture(scope="module")
def ids():
    return torch.randint(0, CFG["vocab_size"], (2, 19), generator=torch.Generator().manual_seed(5))


def _k_quant(files, qtype):
    """Q4_K / Q6_K files by llama.cpp's quantizer (gguf.quants only decodes K-quants): needs llama-cpp-python."""
    pytest.importorskip("llama_cpp", reason="K-quant files are made by llama.cpp's quantizer (llama-cpp-python)")
    from tests.gguf.llama_cpp_files import _local_model

    f32 = files[2]["f32"]
    out = f32.with_name(f"model-{qtype}.gguf")
    if not out.is_file():
        _local_model().quantize_gguf(f32, out, {"q4_k": "q4_k_m", "q6_k": "q6_k"}[qtype])
    return out


@pytest.mark.parametrize("qtype", ["f32", "f16", "bf16", "q8_0", "q4_0", "q4_k", "q6_k"])
def test_logits_equal_transformers_on_stored_weights(files, ids, qtype):
    import copy

    import gguf

    hf, _, paths = files
    path = paths[qtype] if qtype in paths else _k_quant(files, qtype)
    kinds = {t.tensor_type.name for t in gguf.GGUFReader(str(path)).tensors}
    want_kind = {"f32": "F32", "f16": "F16", "bf16": "BF16"}.get(qtype, qtype.upper())
    assert want_kind in kinds, f"{path.name}: no {want_kind} tensor ({kinds})"
    ours = load_model(path, progress=False, device="cpu", dtype=torch.float32)
    got = ours(ids)
    ref = copy.deepcopy(hf)
    set_from_file(ref, path)
    with torch.no_grad():
        want = ref(ids).logits.float()
        exact = hf(ids).logits.float()
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4, msg=lambda m: f"{qtype}: {m}")
    rel = ((got - exact).norm(dim=-1) / exact.norm(dim=-1)).median().item()
    assert rel <= BOUND[qtype], f"{qtype}: median over tokens of |diff| / |logits| = {rel:.3g} > {BOUND[qtype]}"


def test_config_from_metadata(files):
    _, hf_dir, paths = files
    want = Llama4Config.from_pretrained(hf_dir)
    for qtype in ("f32", "q8_0"):
        got = read_config(paths[qtype])
        skip = ("torch_dtype", "eos_token_id", "rope_scaling")
        assert {k: v for k, v in got.__dict__.items() if k not in skip} == \
               {k: v for k, v in want.__dict__.items() if k not in skip}
        assert sorted(got.eos_token_ids) == [2, 3, 4]  # <|eot|> from the file, the others by name
        rs, ws = got.rope_scaling, want.rope_scaling
        assert rs.factor == ws.factor
        assert rs.low_freq_factor / rs.original_max_position_embeddings == pytest.approx(
            ws.low_freq_factor / ws.original_max_position_embeddings, rel=1e-5)
        assert rs.high_freq_factor / rs.original_max_position_embeddings == pytest.approx(
            ws.high_freq_factor / ws.original_max_position_embeddings, rel=1e-5)
    assert read_config(paths["f32"]).torch_dtype == "float32"
    assert read_config(paths["bf16"]).torch_dtype == "bfloat16"


def test_tokenizer_from_metadata(files):
    _, hf_dir, paths = files
    a, b = Tokenizer.from_pretrained(hf_dir), Tokenizer.from_pretrained(paths["q8_0"])
    texts = ["Hello world!  It's 12345 tests\n\n  ok", "def f(x):\n    return x**2  # ünïcode 😀",
             "<|begin_of_text|>hi<|eot|> THE END", ""]
    for t in texts:
        assert b.encode(t) == a.encode(t), t
        ids = a.encode(t)
        assert b.decode(ids) == a.decode(ids) and b.decode(ids, False) == a.decode(ids, False)
    assert (b.bos_token_id, b.pad_token_id, b.vocab_size) == (a.bos_token_id, a.pad_token_id, a.vocab_size)
    assert sorted(b.eos_token_ids) == sorted(a.eos_token_ids)
    assert b.all_special_ids == a.all_special_ids and b.is_byte_level
    assert all(b.token_bytes(i) == a.token_bytes(i) for i in range(a.vocab_size))
    msgs = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    assert b.apply_chat_template(msgs, tokenize=True) == a.apply_chat_template(msgs, tokenize=True)


@pytest.mark.parametrize("qtype", ["f32", "q8_0"])
def test_our_export_matches_the_converters_file(files, tmp_path, qtype):
    """write_gguf on the same checkpoint: llama.cpp's tensor names, shapes, types and (F32) values, and
    every metadata key the converter writes, with the same value where both describe the model."""
    import gguf
    import numpy as np

    from amd_llama4.tools.gguf_export import export_gguf

    _, hf_dir, paths = files
    ours = gguf.GGUFReader(str(export_gguf(hf_dir, tmp_path / f"ours-{qtype}.gguf", qtype)))
    theirs = gguf.GGUFReader(str(paths[qtype]))
    a = {t.name: t for t in ours.tensors}
    b = {t.name: t for t in theirs.tensors}
    assert sorted(a) == sorted(b)
    for n, t in b.items():
        assert a[n].shape.tolist() == t.shape.tolist() and a[n].tensor_type == t.tensor_type, n
        if qtype == "f32":
            np.testing.assert_allclose(np.asarray(a[n].data), np.asarray(t.data), rtol=1e-6, atol=1e-7, err_msg=n)
    naming = ("general.name", "general.size_label", "general.basename", "general.finetune")
    for k, f in theirs.fields.items():
        if k.startswith("GGUF.") or k in naming:
            continue
        assert k in ours.fields, f"our export lacks the converter's key {k!r}"
        if k != "tokenizer.ggml.pre":  # the converter was told 'llama-bpe'; we derive it from the regex
            assert ours.fields[k].contents() == f.contents(), k
