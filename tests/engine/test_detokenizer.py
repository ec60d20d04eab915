import random

import pytest

from amd_llama4.engine.detokenizer import IncrementalDetokenizer
from amd_llama4.engine.sampling_params import SamplingParams
from amd_llama4.engine.tokenizer import Tokenizer, byte_decoder

MULTI = "Grüße 中文 😀🚀 déjà vu, 👍🏽 ok — 日本語!"
# bytes path (byte-level BPE), DecodeStream path (with its window fallbacks), plain window path
PATHS = ["bytes", "stream", "window"]


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer.from_pretrained("tiny-scout")


def byte_ids(tok: Tokenizer, text: str) -> list[int]:
    """One base token per UTF-8 byte: a different tokenization of the same text."""
    to_char = {b: c for c, b in byte_decoder().items()}
    return [tok.token_to_id(to_char[b]) for b in text.encode("utf-8")]


def stream(tok, ids, params=None, use_bytes="bytes", prompt_ids=None):
    """use_bytes: a PATHS mode (True/False = bytes/window, for the older call sites)."""
    mode = {True: "bytes", False: "window"}.get(use_bytes, use_bytes)
    d = IncrementalDetokenizer(tok, params or SamplingParams(), prompt_ids, use_bytes=mode == "bytes",
                               use_stream=mode == "stream")
    assert (d._stream is not None) == (mode == "stream")
    deltas = [d.add(i) for i in ids]
    deltas.append(d.finish())
    return d, deltas


@pytest.mark.parametrize("use_bytes", PATHS)
@pytest.mark.parametrize("tokenize", ["bpe", "bytes"])
def test_streaming_multibyte(tok, use_bytes, tokenize):
    ids = tok.encode(MULTI, add_bos=False) if tokenize == "bpe" else byte_ids(tok, MULTI)
    d, deltas = stream(tok, ids, use_bytes=use_bytes, prompt_ids=tok.encode("Q:"))
    for delta in deltas:
        assert "\ufffd" not in delta
        delta.encode("utf-8")  # no lone surrogates
    assert "".join(deltas) == tok.decode(ids) == MULTI == d.text
    assert "" in deltas[:-1]  # some character spanned several tokens and was held back
    assert d.stopped_by is None


@pytest.mark.parametrize("use_bytes", PATHS)
@pytest.mark.parametrize("skip", [True, False])
def test_streaming_random_ids_matches_decode(tok, use_bytes, skip):
    # Arbitrary ids, including specials and byte sequences that never form valid UTF-8.
    rng = random.Random(1)
    params = SamplingParams(skip_special_tokens=skip)
    for _ in range(200):
        ids = [rng.randrange(512) for _ in range(rng.randrange(1, 30))]
        d, deltas = stream(tok, ids, params, use_bytes)
        assert "".join(deltas) == tok.decode(ids, skip_special_tokens=skip) == d.text, ids


def test_special_tokens(tok):
    ids = tok.encode("hi", add_bos=False) + [3] + tok.encode(" there", add_bos=False)
    _, deltas = stream(tok, ids)
    assert "".join(deltas) == "hi there"
    _, deltas = stream(tok, ids, SamplingParams(skip_special_tokens=False))
    assert "".join(deltas) == "hi<|eot|> there"


@pytest.mark.parametrize("use_bytes", PATHS)
def test_stop_string_split_across_tokens(tok, use_bytes):
    text = "The answer is 42. STOP here and more"
    ids = tok.encode(text, add_bos=False)
    assert not any("STOP" in tok.decode([i]) for i in ids)  # really split
    d, deltas = stream(tok, ids, SamplingParams(stop=["STOP"]), use_bytes)
    assert d.stopped_by == "STOP" and d.finished
    assert d.text == "".join(deltas) == "The answer is 42. "
    assert all("S" not in x for x in deltas)  # nothing of the stop string ever leaked

    d, deltas = stream(tok, ids, SamplingParams(stop=["STOP"], include_stop_str_in_output=True), use_bytes)
    assert d.text == "".join(deltas) == "The answer is 42. STOP"


@pytest.mark.parametrize("use_bytes", PATHS)
@pytest.mark.parametrize("stop, expected", [
    ("中文", "Grüße "),  # a stop string made of multi-token characters
    ("文 😀", "Grüße 中"),  # starts in the middle of a multi-byte run
    ("ü", "Gr"),  # a 2-byte char split over two byte tokens
    ("😀🚀 d", "Grüße 中文 "),
])
def test_stop_string_across_multibyte_boundary(tok, use_bytes, stop, expected):
    for ids in (tok.encode(MULTI, add_bos=False), byte_ids(tok, MULTI)):
        d, deltas = stream(tok, ids, SamplingParams(stop=[stop]), use_bytes)
        assert d.text == "".join(deltas) == expected and d.stopped_by == stop
        for x in deltas:
            assert "\ufffd" not in x


@pytest.mark.parametrize("tokenize", ["bpe", "bytes"])
def test_first_completed_stop_wins_regardless_of_tokenization(tok, tokenize):
    text = "xx abcd yy"
    ids = tok.encode(text, add_bos=False) if tokenize == "bpe" else byte_ids(tok, text)
    d, _ = stream(tok, ids, SamplingParams(stop=["abcd", "bc", "yy"]))
    assert (d.text, d.stopped_by) == ("xx a", "bc")
    d, _ = stream(tok, ids, SamplingParams(stop=["abcd", "bcd"]))  # same end: the earlier start
    assert (d.text, d.stopped_by) == ("xx ", "abcd")


def test_hold_back_and_release(tok):
    d = IncrementalDetokenizer(tok, SamplingParams(stop=["STOP"]))
    out = ""
    for i in byte_ids(tok, "ab ST"):
        out += d.add(i)
    assert out == "ab "  # "ST" may still become "STOP"
    for i in byte_ids(tok, "AR"):
        out += d.add(i)
    assert out == "ab STAR"  # disambiguated: released
    for i in byte_ids(tok, " S"):
        out += d.add(i)
    assert out == "ab STAR "
    out += d.finish()  # end of request: the held tail is not a stop string
    assert out == d.text == "ab STAR S" and d.stopped_by is None
    assert d.add(byte_ids(tok, "x")[0]) == "" and d.finish() == ""


def test_nothing_after_stop(tok):
    d = IncrementalDetokenizer(tok, SamplingParams(stop=["."]))
    got = [d.add(i) for i in tok.encode("one. two. three", add_bos=False)] + [d.finish()]
    assert "".join(got) == d.text == "one" and d.stopped_by == "."


def test_stop_string_not_matched_in_skipped_special(tok):
    ids = tok.encode("a", add_bos=False) + [3] + tok.encode("b", add_bos=False)
    d, _ = stream(tok, ids, SamplingParams(stop=["eot"]))
    assert d.text == "ab" and d.stopped_by is None
    d, _ = stream(tok, ids, SamplingParams(stop=["eot"], skip_special_tokens=False))
    assert d.text == "a<|" and d.stopped_by == "eot"


def test_work_per_token_is_bounded(tok, monkeypatch):
    text = ("Streaming 中文 and 😀 text. " * 40)
    ids = tok.encode(text, add_bos=False)
    assert len(ids) > 300
    longest = []
    real = tok.decode

    def counting_decode(ids_, skip_special_tokens=True):
        longest.append(len(ids_))
        return real(ids_, skip_special_tokens)

    monkeypatch.setattr(tok, "decode", counting_decode)
    d, deltas = stream(tok, ids, SamplingParams(stop=["never seen"]), use_bytes=True)
    assert longest == []  # the bytes path never re-decodes
    d, deltas = stream(tok, ids, SamplingParams(stop=["never seen"]), use_bytes=False,
                       prompt_ids=list(range(9, 200)))
    assert max(longest) <= 12 and len(longest) <= 2 * len(ids) + 2
    monkeypatch.undo()
    assert "".join(deltas) == text


def test_decode_stream_path_decodes_without_python_windows(tok, monkeypatch):
    ids = tok.encode(MULTI * 3, add_bos=False)
    calls = []
    real = tok.decode
    monkeypatch.setattr(tok, "decode", lambda ids_, skip_special_tokens=True: calls.append(ids_) or real(
        ids_, skip_special_tokens))
    d, deltas = stream(tok, ids, use_bytes="stream", prompt_ids=tok.encode("Q:"))
    assert calls == []  # valid text: every piece came from DecodeStream
    # bytes that never form a character: the window fallback emits U+FFFD (as decode) and goes on
    bad = byte_ids(tok, "ab") + [byte_ids(tok, "é")[1]] * 9 + byte_ids(tok, "cd") + byte_ids(tok, "中")[:2]
    d, deltas = stream(tok, bad, use_bytes="stream")
    monkeypatch.undo()
    assert "".join(deltas) == d.text == real(bad) and "\ufffd" in d.text and d.text.startswith("ab")
    assert 0 < len(calls) <= 2 * len(bad)  # from the fallback on, the window path decodes


def _metaspace_tokenizer() -> Tokenizer:
    """A SentencePiece-style (not byte-level) tokenizer: ▁-prefixed words, <0xNN> byte fallback."""
    from tokenizers import Tokenizer as HF, decoders, models, pre_tokenizers

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"<0x{b:02X}>": 3 + b for b in range(256)}}
    for w in ["▁", "▁hello", "▁world", "hello", "▁a", "b", "c", "▁the"]:
        vocab[w] = len(vocab)
    hf = HF(models.BPE(vocab, [], unk_token="<unk>", byte_fallback=True))
    hf.pre_tokenizer = pre_tokenizers.Metaspace()
    hf.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                    decoders.Strip(" ", 1, 0)])
    hf.add_special_tokens(["<s>", "</s>"])
    return Tokenizer(hf, byte_level=False)


@pytest.mark.parametrize("mode", ["stream", "window"])
def test_sentencepiece_style_tokenizer(mode):
    sp_tok = _metaspace_tokenizer()
    assert not sp_tok.is_byte_level
    ids = sp_tok.encode("hello world 中文 a b c", add_bos=False)
    assert any(3 <= i < 259 for i in ids)  # byte-fallback pieces
    prompt = sp_tok.encode("the", add_bos=False)
    d, deltas = stream(sp_tok, ids, use_bytes=mode, prompt_ids=prompt)
    # after a prompt, the first word keeps its leading space (Strip only applies at the start)
    assert "".join(deltas) == sp_tok.decode(prompt + ids)[len(sp_tok.decode(prompt)):] == " " + sp_tok.decode(ids)
    assert "" in deltas[:-1]  # 中 and 文 span 3 byte-fallback pieces each
    # Random texts with specials between words (random ids would split byte-fallback runs, which
    # ByteFallback decodes as a whole: no streaming can match decode() there)
    rng = random.Random(3)
    words = ["hello", "world", "a", "b", "c", "中文", "😀", "é", "the", "x"]
    for _ in range(100):
        ids = []
        for _ in range(rng.randrange(1, 8)):
            ids += sp_tok.encode(" ".join(rng.choice(words) for _ in range(3)), add_bos=False)
            ids += [rng.choice([1, 2])] if rng.random() < 0.3 else []
        # the window path loses a word's leading space when a skipped special starts its window
        # (Strip then applies to the word); DecodeStream gets that right
        for skip in (True, False) if mode == "stream" else (False,):
            d, deltas = stream(sp_tok, ids, SamplingParams(skip_special_tokens=skip), mode)
            assert "".join(deltas) == sp_tok.decode(ids, skip_special_tokens=skip) == d.text, ids
