"""`amd-llama4 convert --to gguf` / write_gguf: llama.cpp's names and metadata, lossless round trip at
F32, stored values within each type's rounding, LLM(model="x.gguf") equal to the HF folder, and
errors that name the file and the key or tensor at fault."""
import shutil

import numpy as np
import pytest
import torch

from amd_llama4 import Llama4Config, load_model
from amd_llama4.engine.tokenizer import Tokenizer, tiny_tokenizer_dir
from amd_llama4.gguf import GGUFError, read_config
from amd_llama4.gguf.writer import write_gguf
from amd_llama4.tools.gguf_export import export_gguf
from tests.gguf.llama_cpp_files import requantize, set_from_file

gguf = pytest.importorskip("gguf")

# the keys llama.cpp's llama4 loader reads (src/models/llama4.cpp and the common hparams)
LLAMA_CPP_KEYS = ["general.architecture", "llama4.block_count", "llama4.context_length", "llama4.embedding_length",
                  "llama4.feed_forward_length", "llama4.attention.head_count", "llama4.attention.head_count_kv",
                  "llama4.rope.freq_base", "llama4.attention.layer_norm_rms_epsilon", "llama4.expert_count",
                  "llama4.expert_used_count", "llama4.attention.key_length", "llama4.attention.value_length",
                  "llama4.vocab_size", "llama4.rope.dimension_count", "llama4.interleave_moe_layer_step",
                  "llama4.expert_feed_forward_length", "tokenizer.ggml.model", "tokenizer.ggml.pre",
                  "tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "tokenizer.ggml.merges",
                  "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id", "tokenizer.chat_template"]
# per-tensor |stored - original| / |original| (Frobenius) allowed for each type's rounding
ROUNDING = {"f32": 0.0, "f16": 1e-3, "bf16": 8e-3, "q8_0": 1e-2, "q4_0": 0.2}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """tiny-scout (trained weights) exported at F32, and the model it came from."""
    d = tmp_path_factory.mktemp("gguf_export")
    return load_model("tiny-scout", progress=False, device="cpu", dtype=torch.float32), export_gguf(
        "tiny-scout", d / "tiny-f32.gguf", "f32"), d


def test_f32_round_trip_is_lossless(tiny):
    ref, path, _ = tiny
    back = load_model(path, progress=False, device="cpu", dtype=torch.float32)
    ids = torch.randint(0, 512, (2, 45), generator=torch.Generator().manual_seed(0))  # > one 32-token chunk
    torch.testing.assert_close(back(ids), ref(ids), rtol=0, atol=0)
    cfg = read_config(path)
    text = {k: v for k, v in ref.config.to_hf_dict().items() if k != "torch_dtype"}
    assert {k: v for k, v in cfg.to_hf_dict().items() if k != "torch_dtype"} == text


def test_names_and_metadata_as_llama_cpp_expects(tiny):
    _, path, _ = tiny
    r = gguf.GGUFReader(str(path))
    known = {gguf.TENSOR_NAMES[t] for t in gguf.MODEL_TENSORS[gguf.MODEL_ARCH.LLAMA4]}
    got = {t.name.rsplit(".", 1)[0] for t in r.tensors}
    assert {n.replace("blk.0.", "blk.{bid}.").replace("blk.1.", "blk.{bid}.").replace("blk.2.", "blk.{bid}.")
            .replace("blk.3.", "blk.{bid}.") for n in got} <= known
    assert "blk.0.ffn_gate_exps" in got and "rope_freqs" in got and "output" in got
    missing = [k for k in LLAMA_CPP_KEYS if k not in r.fields]
    assert not missing, missing
    assert r.fields["general.architecture"].contents() == "llama4"
    assert r.fields["tokenizer.ggml.pre"].contents() == "llama-bpe"  # the tiny tokenizer's regex is Llama 3's
    shapes = {t.name: t.shape.tolist() for t in r.tensors}  # ggml order: [in, out, experts]
    assert shapes["blk.0.ffn_gate_exps.weight"] == [128, 96, 8] and shapes["blk.0.ffn_down_exps.weight"] == [96, 128, 8]
    assert shapes["blk.0.attn_q.weight"] == [128, 128] and shapes["blk.0.attn_k.weight"] == [128, 64]


@pytest.mark.parametrize("outtype", ["f16", "bf16", "q8_0", "q4_0"])
def test_types_store_the_rounded_weights(tiny, outtype):
    ref, _, d = tiny
    path = export_gguf("tiny-scout", d / f"tiny-{outtype}.gguf", outtype)
    types = {t.tensor_type.name for t in gguf.GGUFReader(str(path)).tensors}
    assert outtype.upper() in types and "F32" in types  # norms and router stay F32
    stored = load_model("tiny-scout", progress=False, device="cpu", dtype=torch.float32)
    set_from_file(stored, path)  # decoded by gguf's own dequantisers, not our reader
    want = dict(ref.named_parameters())
    for n, p in stored.named_parameters():
        if n.startswith(("vision_model.", "multi_modal_projector.")):
            continue
        err = ((p - want[n]).norm() / want[n].norm()).item()
        assert err <= ROUNDING[outtype], f"{outtype}: {n} stored with relative error {err:.3g}"
    ours = load_model(path, progress=False, device="cpu", dtype=torch.float32)
    ids = torch.randint(0, 512, (1, 40), generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(ours(ids), stored(ids), rtol=1e-4, atol=1e-4)


def test_convert_cli(tiny, capsys):
    from amd_llama4.cli import main

    _, _, d = tiny
    out = d / "cli.gguf"
    assert main(["convert", "--to", "gguf", "--model", "tiny-maverick", "--out", str(out), "--outtype", "q8_0",
                 "--no-progress"]) == 0
    assert "wrote" in capsys.readouterr().out
    assert read_config(out).num_local_experts == 16
    assert main(["convert", "--to", "gguf", "--model", "tiny-maverick", "--out", str(out)]) == 1
    assert "already exists" in capsys.readouterr().err


def test_llm_from_gguf_equals_hf_folder(tmp_path):
    from amd_llama4 import LLM, SamplingParams
    from tests.hf_reference import save_hf

    cfg = Llama4Config(vocab_size=512, hidden_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                       intermediate_size=32, intermediate_size_mlp=48, num_hidden_layers=4, num_local_experts=4,
                       num_experts_per_tok=1, interleave_moe_layer_step=2, attention_chunk_size=8, floor_scale=6,
                       bos_token_id=1, eos_token_id=[2, 3, 4], pad_token_id=0, max_position_embeddings=512)
    folder = tmp_path / "hf"
    save_hf(cfg, folder, seed=7)
    for f in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        shutil.copy(tiny_tokenizer_dir() / f, folder / f)
    path = export_gguf(folder, tmp_path / "m.gguf", "f32")
    sp = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=False)
    prompts = ["The quick brown fox", "def main():\n    return"]
    want = [o.outputs[0] for o in LLM(model=str(folder), device="cpu", dtype="float32").generate(prompts, sp)]
    for kw in ({}, {"tokenizer": str(folder)}):  # the GGUF's own tokenizer, then an explicit one
        got = [o.outputs[0] for o in LLM(model=str(path), device="cpu", dtype="float32", **kw).generate(prompts, sp)]
        assert [g.token_ids for g in got] == [w.token_ids for w in want], kw
        assert [g.text for g in got] == [w.text for w in want], kw
    assert Tokenizer.from_pretrained(path).chat_template == Tokenizer.from_pretrained(folder).chat_template


def test_errors_name_file_and_key_or_tensor(tiny, tmp_path):
    _, path, _ = tiny
    with pytest.raises(GGUFError, match=r"arch\.gguf.*'general\.architecture' is 'llama'"):
        load_model(requantize(path, tmp_path / "arch.gguf", "f32", arch="llama"), progress=False)
    with pytest.raises(GGUFError, match=r"nokey\.gguf.*missing metadata key 'llama4\.expert_count'"):
        read_config(requantize(path, tmp_path / "nokey.gguf", "f32", remove_keys=("llama4.expert_count",)))
    with pytest.raises(GGUFError, match=r"drop\.gguf.*missing tensor 'blk\.2\.ffn_up_exps\.weight'"):
        load_model(requantize(path, tmp_path / "drop.gguf", "f32", drop=("blk.2.ffn_up_exps.weight",)),
                   progress=False)
    f64 = np.zeros((128,), dtype=np.float64)
    with pytest.raises(GGUFError, match=r"f64\.gguf.*'blk\.1\.attn_norm\.weight' has type F64, unsupported"):
        load_model(requantize(path, tmp_path / "f64.gguf", "f32", replace={"blk.1.attn_norm.weight": f64}),
                   progress=False)
    bad = np.zeros((64, 128), dtype=np.float32)  # [out 64, in 128]: q_proj wants [128, 128]
    with pytest.raises(GGUFError, match=r"shape\.gguf.*'blk\.0\.attn_q\.weight'.*\[64, 128\], expected \[128, 128\]"):
        load_model(requantize(path, tmp_path / "shape.gguf", "f32", replace={"blk.0.attn_q.weight": bad}),
                   progress=False)
    (tmp_path / "junk.gguf").write_bytes(b"not a gguf at all")
    with pytest.raises(GGUFError, match=r"junk\.gguf: not a readable GGUF"):
        load_model(tmp_path / "junk.gguf", progress=False)


def test_unexpected_tensor_and_export_refusals(tiny, tmp_path):
    from amd_llama4.model.safetensors_io import CheckpointError

    ref, path, _ = tiny
    w = np.zeros((4,), dtype=np.float32)
    r = gguf.GGUFReader(str(path))
    wr = gguf.GGUFWriter(str(tmp_path / "stray.gguf"), "llama4")
    for f in r.fields.values():
        if not f.name.startswith("GGUF.") and f.name != "general.architecture":
            vt = f.types[0]
            wr.add_key_value(f.name, f.contents(), vt, sub_type=f.types[-1] if vt == gguf.GGUFValueType.ARRAY else None)
    for t in r.tensors:
        wr.add_tensor(t.name, np.array(t.data), raw_dtype=t.tensor_type)
    wr.add_tensor("blk.0.mystery.weight", w)
    wr.write_header_to_file(), wr.write_kv_data_to_file(), wr.write_tensors_to_file(), wr.close()
    with pytest.raises(CheckpointError, match=r"stray\.gguf: unexpected tensor 'blk\.0\.mystery\.weight'"):
        load_model(tmp_path / "stray.gguf", progress=False)
    with pytest.raises(ValueError, match="outtype 'q2_k'"):
        write_gguf(ref, tmp_path / "x.gguf", "q2_k")
    with pytest.raises(FileExistsError):
        write_gguf(ref, path, "f32")


def test_round_trip_tied_biased_unchunked(tmp_path):
    """Tied embeddings (no output.weight), q/k/v/o biases, no chunked attention (sliding_window 0) and
    no QK norm: the file says it, the model comes back equal."""
    from tests.hf_reference import save_hf

    cfg = Llama4Config(vocab_size=97, hidden_size=48, num_attention_heads=4, num_key_value_heads=2, head_dim=12,
                       intermediate_size=40, intermediate_size_mlp=56, num_hidden_layers=3, num_local_experts=3,
                       num_experts_per_tok=2, interleave_moe_layer_step=1, attention_chunk_size=None,
                       no_rope_layers=[1, 1, 1], use_qk_norm=False, attention_bias=True, tie_word_embeddings=True,
                       rope_scaling=None, bos_token_id=1, eos_token_id=2, pad_token_id=0,
                       max_position_embeddings=256)
    save_hf(cfg, tmp_path / "hf", seed=4)
    ref = load_model(tmp_path / "hf", progress=False, device="cpu", dtype=torch.float32)
    path = export_gguf(tmp_path / "hf", tmp_path / "m.gguf", "f32")
    r = gguf.GGUFReader(str(path))
    got = {t.name for t in r.tensors}
    assert "output.weight" not in got and "rope_freqs.weight" not in got and "blk.0.attn_q.bias" in got
    assert r.fields["llama4.attention.sliding_window"].contents() == 0
    back = load_model(path, progress=False, device="cpu", dtype=torch.float32)
    assert back.config.tie_word_embeddings and back.config.attention_chunk_size is None
    ids = torch.randint(0, 97, (2, 11), generator=torch.Generator().manual_seed(4))
    # hidden states, not logits: load_model leaves a tied lm_head unfilled today (build_model's
    # to_empty unties it; reported), for checkpoint folders and GGUFs alike
    torch.testing.assert_close(back.hidden_states(ids), ref.hidden_states(ids), rtol=0, atol=0)
    torch.testing.assert_close(back.model.embed_tokens.weight, ref.model.embed_tokens.weight, rtol=0, atol=0)
