import random

import pytest

from amd_llama4.engine.detokenizer import IncrementalDetokenizer
from amd_llama4.engine.sampling_params import SamplingParams
from amd_llama4.engine.tokenizer import Tokenizer, byte_decoder

MULTI = "Grüße 中文 😀🚀 déjà vu, 👍🏽 ok — 日本語!"
PATHS = [True, False]  # bytes path (byte-level BPE) and window re-decoding path


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer.from_pretrained("tiny-scout")


def byte_ids(tok: Tokenizer, text: str) -> list[int]:
    """One base token per UTF-8 byte: a different tokenization of the same text."""
    to_char = {b: c for c, b in byte_decoder().items()}
    return [tok.token_to_id(to_char[b]) for b in text.encode("utf-8")]


def stream(tok, ids, params=None, use_bytes=True, prompt_ids=None):
    d = IncrementalDetokenizer(tok, params or SamplingParams(), prompt_ids, use_bytes=use_bytes)
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
