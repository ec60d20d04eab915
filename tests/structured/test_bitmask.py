"""Token bitmask fill (host, llguidance) and apply (device op), and the sampler's use of them."""
import numpy as np
import pytest
import torch

from amd_llama4.engine.sampler import Sampler, SamplingState
from amd_llama4.engine.sampling_params import SamplingParams as SP
from amd_llama4.engine.tokenizer import Tokenizer
from amd_llama4.structured import StructuredOutputsParams as SOP
from amd_llama4.structured.backend import StructuredBackend, bitmask_words
from amd_llama4.structured.bitmask import apply_token_bitmask_, fill_bitmask
from tests.no_sync import no_host_sync

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
NEG = float("-inf")


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.from_pretrained("tiny-scout")


@pytest.fixture(scope="module")
def backend(tok):
    return StructuredBackend(tok, tok.eos_token_ids)


def _reference(logits: torch.Tensor, words: torch.Tensor) -> torch.Tensor:
    """Bit by bit, in Python: id v allowed iff bit v % 32 of word v // 32 is set."""
    out = logits.clone()
    w = words.cpu().numpy().view(np.uint32)
    for b in range(logits.shape[0]):
        for v in range(logits.shape[1]):
            if not (int(w[b, v // 32]) >> (v % 32)) & 1:
                out[b, v] = NEG
    return out


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("V,extra_words", [(1, 0), (31, 0), (32, 0), (33, 0), (100, 1), (517, 2)])
def test_apply_matches_bitwise_reference(device, V, extra_words):
    g = torch.Generator().manual_seed(V)
    B = 5
    words = torch.randint(-2**31, 2**31 - 1, (B, bitmask_words(V) + extra_words), generator=g, dtype=torch.int64)
    words = words.to(torch.int32)
    words[1] = -1  # a free row: everything allowed
    words[3] = 0  # nothing allowed
    logits = torch.randn(B, V, generator=g)
    ref = _reference(logits, words)
    out = apply_token_bitmask_(logits.clone().to(device), words.to(device))
    torch.testing.assert_close(out.cpu(), ref, rtol=0, atol=0)
    torch.testing.assert_close(out[1].cpu(), logits[1], rtol=0, atol=0)
    assert torch.isinf(out[3]).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_apply_keeps_dtype_and_allowed_values(dtype):
    logits = torch.randn(2, 70).to(dtype)
    words = torch.zeros(2, 3, dtype=torch.int32)
    words[0, 0] = 1 << 5
    words[1, 2] = 1 << 3  # id 67
    out = apply_token_bitmask_(logits.clone(), words)
    assert out.dtype == dtype
    assert torch.isfinite(out).sum().item() == 2
    assert out[0, 5] == logits[0, 5] and out[1, 67] == logits[1, 67]


def test_apply_bad_inputs_name_the_problem():
    logits = torch.zeros(2, 65)
    with pytest.raises(ValueError, match="bitmask must be int32"):
        apply_token_bitmask_(logits, torch.zeros(2, 3, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"int32 \[B, >= 3\]"):
        apply_token_bitmask_(logits, torch.zeros(2, 2, dtype=torch.int32))
    with pytest.raises(ValueError, match=r"logits \[B, V\] and bitmask \[B, W\]"):
        apply_token_bitmask_(logits, torch.zeros(3, 3, dtype=torch.int32))
    with pytest.raises(ValueError, match=r"logits \[B, V\]"):
        apply_token_bitmask_(torch.zeros(65), torch.zeros(1, 3, dtype=torch.int32))


def test_apply_issues_no_host_sync():
    logits, words = torch.randn(4, 301), torch.randint(-100, 100, (4, 10), dtype=torch.int32)
    apply_token_bitmask_(logits.clone(), words)  # warm the shift table outside the checked region
    with no_host_sync():
        apply_token_bitmask_(logits, words)


def test_grammar_vocab_smaller_than_logits_width(backend, tok):
    """The model's logits may be wider than the tokenizer's vocabulary: those ids are never allowed."""
    V = tok.vocab_size + 45  # 557: grammar words 16, logits words 18
    m = backend.matcher(SOP(regex=r"[a-z ]{0,40}"))
    words = fill_bitmask([m, None], V, torch.device("cpu"))
    assert words.shape == (2, bitmask_words(V)) and words.dtype == torch.int32
    out = apply_token_bitmask_(torch.zeros(2, V), words)
    assert torch.isinf(out[0, tok.vocab_size:]).all()
    assert torch.isfinite(out[0, :tok.vocab_size]).sum() > 10
    assert torch.isfinite(out[1]).all()  # the free row untouched
    with pytest.raises(ValueError, match="fill_bitmask: row must be contiguous int32"):
        m.fill_bitmask(np.zeros(3, np.int32))


def test_eos_allowed_exactly_when_the_grammar_accepts(backend, tok):
    m = backend.matcher(SOP(regex=r"ab|abc"))
    eos = tok.eos_token_ids
    V = tok.vocab_size

    def allowed():
        return torch.isfinite(apply_token_bitmask_(torch.zeros(1, V), fill_bitmask([m], V, torch.device("cpu"))))[0]

    assert not allowed()[eos].any()  # nothing generated: not accepting
    for t in tok.encode("ab", add_bos=False):
        assert m.accept(t)
    assert m.accepting and not m.terminated
    a = allowed()
    assert a[eos].all()  # every eos id of the model, not only the tokenizer's first
    assert a[tok.encode("c", add_bos=False)[0]]
    assert m.accept(eos[-1]) and m.terminated


def test_sampler_batch_mixes_constrained_and_free_rows(backend, tok):
    V = tok.vocab_size + 7
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, V, generator=g) * 3
    free = SamplingState(SP(temperature=0), [5], tok.eos_token_ids)
    con = SamplingState(SP(temperature=0, logprobs=2), [5], tok.eos_token_ids,
                        matcher=backend.matcher(SOP(regex=r"[0-9]{3}")))
    seeded = SamplingState(SP(temperature=1.0, seed=3), [5], tok.eos_token_ids,
                           matcher=backend.matcher(SOP(choice=["yes", "no"])))
    res = Sampler()(logits.clone(), [free, con, seeded])
    assert res[0].token_id == int(logits[0].argmax())  # the free row is not touched by the others' masks
    assert tok.decode([res[1].token_id]).isdigit()
    assert res[1].logprob is not None and res[1].logprob > -50  # logprobs over the masked row: finite
    assert all(tok.decode([t]).isdigit() for t, _ in res[1].top_logprobs)
    assert tok.decode([res[2].token_id]) in ("y", "ye", "yes", "n", "no")


@pytest.mark.parametrize("extra_ids", [0, 45])
def test_parallel_fill_equals_row_by_row(backend, tok, extra_ids, monkeypatch):
    """Many constrained rows use llguidance's thread pool; the masks equal the one-by-one fill,
    free rows stay all ones, and ids past the grammar's vocabulary stay masked."""
    from amd_llama4.structured import backend as be

    monkeypatch.setattr(be, "_PARALLEL_MIN_ROWS", 2)
    monkeypatch.setattr(be, "_PARALLEL_MIN_CPUS", 1)
    V = tok.vocab_size + extra_ids
    specs = [SOP(json={"type": "object", "properties": {"a": {"type": "integer"}}}), SOP(regex="[a-c]+x"),
             SOP(choice=["yes", "no"]), SOP(json_object=True), SOP(regex="[0-9]{2}")]
    prefix = tok.encode("{", add_bos=False)
    ms = [backend.matcher(s) for s in specs]
    ms[0].accept(prefix[0])
    row_ms = [ms[0], None, ms[1], ms[2], None, ms[3], ms[4]]
    par = fill_bitmask(row_ms, V, torch.device("cpu"))
    ref = torch.full_like(par, -1)
    for i, m in enumerate(row_ms):
        if m is not None:
            m.fill_bitmask(ref[i].numpy())
    assert be._executor is not None  # the pool was used
    torch.testing.assert_close(par, ref, rtol=0, atol=0)
    assert (par[1] == -1).all() and (par[4] == -1).all()
