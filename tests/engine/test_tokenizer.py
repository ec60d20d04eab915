import json
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from amd_llama4.engine.tokenizer import Tokenizer, byte_decoder, count_image_parts, tiny_tokenizer_dir

REPO = Path(__file__).resolve().parents[2]
SPECIALS = ["<|finetune_right_pad|>", "<|begin_of_text|>", "<|end_of_text|>", "<|eot|>", "<|eom|>",
            "<|header_start|>", "<|header_end|>", "<|python_start|>", "<|python_end|>"]
IMAGE_SPECIALS = ["<|image_start|>", "<|image_end|>", "<|tile_x_separator|>", "<|tile_y_separator|>",
                  "<|image|>", "<|patch|>"]  # ids 506..511
TEXTS = [
    "Hello world! def f(x): return x + 1\n\tindented   spaces",
    "Grüße aus München — le café, déjà vu.",
    "中文测试：你好，世界！",
    "emoji 😀🚀 and 👍🏽 mixed with ASCII",
    "",
]


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer.from_pretrained("tiny-scout")


def test_tiny_layout(tok):
    assert tok.vocab_size == 512
    assert [tok.id_to_token(i) for i in range(9)] == SPECIALS
    assert [tok.id_to_token(i) for i in range(506, 512)] == IMAGE_SPECIALS
    assert tok.all_special_ids == [*range(9), *range(506, 512)]
    assert (tok.bos_token_id, tok.pad_token_id, tok.eos_token_ids) == (1, 0, [2, 3, 4])
    base = {tok.id_to_token(i) for i in range(9, 265)}
    assert base == set(byte_decoder())  # ids 9..264: the 256 byte-level base tokens
    assert sorted(tok.token_bytes(i)[0] for i in range(9, 265)) == list(range(256))
    assert tok.is_byte_level
    with pytest.raises(ValueError, match="out of range"):
        tok.id_to_token(512)


@pytest.mark.parametrize("name", ["tiny-scout", "tiny-maverick", "tiny"])
def test_presets_share_the_packaged_tokenizer(name):
    t = Tokenizer.from_pretrained(name)
    assert t.vocab_size == 512 and Path(t.source) == tiny_tokenizer_dir()


@pytest.mark.parametrize("text", TEXTS)
def test_round_trip(tok, text):
    ids = tok.encode(text, add_bos=False)
    assert all(0 <= i < 512 for i in ids)
    assert tok.decode(ids) == text
    with_bos = tok.encode(text)
    assert with_bos == [1, *ids]
    assert tok.decode(with_bos) == text  # bos skipped
    assert tok.decode(with_bos, skip_special_tokens=False) == "<|begin_of_text|>" + text


def test_multibyte_chars_are_split_and_merged(tok):
    # The streaming tests depend on both: rare characters span several tokens, common ones merge.
    assert len(tok.encode("中", add_bos=False)) == 3
    assert len(tok.encode("😀", add_bos=False)) == 4
    assert any(tok.token_bytes(i) == "é".encode() for i in range(512))
    assert len(tok.encode("é", add_bos=False)) == 1


def test_bos_not_duplicated(tok):
    ids = tok.encode("<|begin_of_text|>hi")
    assert ids[0] == 1 and ids.count(1) == 1
    assert tok.encode("hi", add_bos=False)[0] != 1


def test_token_bytes_match_decode(tok):
    # Random ids (incl. specials and broken UTF-8): bytes joined and decoded lossily == decode().
    rng = random.Random(0)
    for _ in range(500):
        ids = [rng.randrange(512) for _ in range(rng.randrange(1, 9))]
        for skip in (True, False):
            joined = b"".join(tok.token_bytes(i) for i in ids if not (skip and tok.is_special(i)))
            assert joined.decode("utf-8", "replace") == tok.decode(ids, skip), ids


def test_chat_template_exact(tok):
    msgs = [{"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Hi, café?"},
            {"role": "assistant", "content": [{"type": "text", "text": "Oui."}]},
            {"role": "user", "content": [{"type": "text", "text": "中"}, {"type": "text", "text": "文"}]}]
    expected = ("<|begin_of_text|>"
                "<|header_start|>system<|header_end|>\n\nYou are terse.<|eot|>"
                "<|header_start|>user<|header_end|>\n\nHi, café?<|eot|>"
                "<|header_start|>assistant<|header_end|>\n\nOui.<|eot|>"
                "<|header_start|>user<|header_end|>\n\n中文<|eot|>"
                "<|header_start|>assistant<|header_end|>\n\n")
    assert tok.apply_chat_template(msgs) == expected
    no_gen = tok.apply_chat_template(msgs, add_generation_prompt=False)
    assert no_gen == expected[: -len("<|header_start|>assistant<|header_end|>\n\n")]
    ids = tok.apply_chat_template(msgs, tokenize=True)
    assert ids == tok.encode(expected) and ids.count(1) == 1 and ids[0] == 1
    assert ids[1] == 5 and ids.count(3) == 4  # header_start, four <|eot|>
    assert tok.decode(ids, skip_special_tokens=False) == expected


@pytest.mark.parametrize("msgs, match", [
    ([], "non-empty"),
    ("hello", "non-empty"),
    ([{"role": "robot", "content": "x"}], "role"),
    ([{"role": "user", "content": "x"}, {"role": "system", "content": "y"}],
     "system message must come first"),
    ([{"role": "user", "content": 3}], "content"),
    ([{"role": "user"}], "content"),
    ([{"role": "user", "content": [{"type": "audio_url", "audio_url": {"url": "x"}}]}], "audio_url"),
    ([{"role": "user", "content": [{"type": "text", "text": None}]}], "text"),
    (["not a dict"], "dict"),
])
def test_chat_template_validation(tok, msgs, match):
    with pytest.raises(ValueError, match=match):
        tok.apply_chat_template(msgs)


def test_chat_template_image_parts(tok):
    # One <|image|> per image part, in place, whether spelled HF's way or OpenAI's.
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "and"},
                                         {"type": "image_url", "image_url": {"url": "data:,"}}, {"type": "text", "text": "?"}]}]
    expected = ("<|begin_of_text|><|header_start|>user<|header_end|>\n\n<|image|>and<|image|>?<|eot|>"
                "<|header_start|>assistant<|header_end|>\n\n")
    assert tok.apply_chat_template(msgs) == expected
    ids = tok.apply_chat_template(msgs, tokenize=True)
    assert ids.count(tok.token_to_id("<|image|>")) == 2 == count_image_parts(msgs)
    assert msgs[0]["content"][2]["type"] == "image_url"  # the caller's messages are not modified
    assert tok.decode(ids) == "user\n\nand?assistant\n\n"  # image tokens are special: skipped


def test_image_tokens_never_come_from_text(tok):
    # Plain text that spells a marker only with a typo encodes as bytes, never as an image id.
    ids = tok.encode("<|patch| <|image |> image patch", add_bos=False)
    assert not set(ids) & set(range(506, 512))


def _copy_tiny(dst: Path) -> Path:
    shutil.copytree(tiny_tokenizer_dir(), dst)
    return dst


def test_folder_loading_and_template_sources(tmp_path):
    d = _copy_tiny(tmp_path / "tok")
    msgs = [{"role": "user", "content": "x"}]
    assert Tokenizer.from_pretrained(d).apply_chat_template(msgs).endswith("assistant<|header_end|>\n\n")

    # Named templates in tokenizer_config.json
    cfg = json.loads((d / "tokenizer_config.json").read_text())
    cfg["chat_template"] = [{"name": "tool_use", "template": "T"},
                            {"name": "default", "template": "D{{ messages|length }}"}]
    (d / "tokenizer_config.json").write_text(json.dumps(cfg))
    assert Tokenizer.from_pretrained(d).apply_chat_template(msgs) == "D1"
    # chat_template.json beats tokenizer_config.json, chat_template.jinja beats both
    (d / "chat_template.json").write_text(json.dumps({"chat_template": "J{{ bos_token }}"}))
    assert Tokenizer.from_pretrained(d).apply_chat_template(msgs) == "J<|begin_of_text|>"
    (d / "chat_template.jinja").write_text("{{ raise_exception('no tools here') }}")
    with pytest.raises(ValueError, match="no tools here"):
        Tokenizer.from_pretrained(d).apply_chat_template(msgs)

    # eos from generation_config + tokenizer_config; without generation_config only the config's eos
    t = Tokenizer.from_pretrained(d)
    assert t.eos_token_ids == [2, 3, 4]
    (d / "generation_config.json").unlink()
    assert Tokenizer.from_pretrained(d).eos_token_ids == [3]
    (d / "config.json").write_text(json.dumps({"text_config": {"eos_token_id": [2, 4], "bos_token_id": 1}}))
    assert Tokenizer.from_pretrained(d).eos_token_ids == [2, 4, 3]


def test_missing_files_give_clear_errors(tmp_path):
    d = _copy_tiny(tmp_path / "tok")
    cfg = json.loads((d / "tokenizer_config.json").read_text())
    del cfg["chat_template"]
    (d / "tokenizer_config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="no chat template"):
        Tokenizer.from_pretrained(d).apply_chat_template([{"role": "user", "content": "x"}])
    (d / "tokenizer.json").unlink()
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        Tokenizer.from_pretrained(d)
    with pytest.raises(FileNotFoundError, match="neither a folder nor a tiny preset"):
        Tokenizer.from_pretrained(tmp_path / "nope")


def test_build_script_reproduces_committed_files():
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import make_tiny_tokenizer as m
    finally:
        sys.path.pop(0)
    if sys.version_info[:2] != m.BUILT_WITH:
        pytest.skip(f"committed tokenizer was built with Python {m.BUILT_WITH}; stdlib docstrings differ")
    r = subprocess.run([sys.executable, str(REPO / "scripts" / "make_tiny_tokenizer.py"), "--check"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "identical" in r.stdout, r.stdout + r.stderr
