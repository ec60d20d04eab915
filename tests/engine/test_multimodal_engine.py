"""Images through the engine: greedy generation with images through `LLM` (generate with
multi_modal_data, chat with image parts) equals a transformers reference loop on a random multimodal
checkpoint saved with its tokenizer, chat template and preprocessor_config.json; also with an
image's tokens split across prefill pieces, after preemption, and with prefix caching (same image:
hit; other image, same text: no wrong hit). The vision tower runs once per distinct image."""
import base64
import io

import pytest

from amd_llama4 import LLM, SamplingParams, load_model
from amd_llama4.engine.llm_engine import EngineArgs, LLMEngine
from tests.engine import mm_engine_helpers as h

GREEDY = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mm_engine")
    hf = h.save_checkpoint(folder, seed=11)
    return folder, hf, load_model(folder, progress=False)


@pytest.fixture(scope="module")
def images():
    # grids with 56 x 56 tiles: 1x1, 2x2, 1x2, 3x1
    return {k: h.make_image(*hw, seed=i) for i, (k, hw) in
            enumerate({"1x1": (56, 56), "2x2": (112, 112), "1x2": (40, 90), "3x1": (150, 50)}.items())}


def _expected(ckpt, tok, prompt_ids, imgs, max_tokens=GREEDY.max_tokens):
    folder, hf, _ = ckpt
    ids, pixels = h.reference_prompt(tok, folder, prompt_ids, imgs)
    return ids, h.greedy(hf, ids, pixels, max_tokens)


def _engine(ckpt, **kw):
    folder, _, model = ckpt
    kw.setdefault("num_kv_blocks", 64)
    return LLMEngine(EngineArgs(model=str(folder), block_size=4, **kw), model=model)


def _run(eng, requests, sp=GREEDY):
    """requests: (prompt, images) -> finished RequestOutputs in order."""
    for i, (p, imgs) in enumerate(requests):
        eng.add_request(str(i), p, sp, multi_modal_data={"image": imgs} if imgs else None)
    final = {}
    while eng.has_unfinished():
        for o in eng.step():
            if o.finished:
                final[o.request_id] = o
    return [final[str(i)] for i in range(len(requests))]


def test_llm_generate_and_chat_equal_transformers(ckpt, images):
    folder, _, _ = ckpt
    llm = LLM(str(folder), num_kv_blocks=64, block_size=4)
    tok = llm.tokenizer
    one = "Look: <|image|> and tell."
    two = "First <|image|> then <|image|>, compare them."
    text = "A text-only prompt on a multimodal checkpoint."
    outs = llm.generate([{"prompt": one, "multi_modal_data": {"image": images["1x1"]}},
                         {"prompt": two, "multi_modal_data": {"image": [images["2x2"], images["1x2"]]}},
                         text], GREEDY)
    for o, (p, imgs) in zip(outs, [(one, [images["1x1"]]), (two, [images["2x2"], images["1x2"]]), (text, [])]):
        ids, want = _expected(ckpt, tok, tok.encode(p), imgs)
        assert o.prompt_token_ids == ids  # image tokens count as prompt tokens (usage.prompt_tokens)
        assert o.outputs[0].token_ids == want, p
    eng = llm.engine
    assert eng.encoder_cache.num_encoded == 3 and len(eng.encoder_cache) == 0  # once each, then freed

    # chat: a PIL image part and a data: URL part (PNG), in the template's order
    buf = io.BytesIO()
    images["3x1"].save(buf, format="PNG")
    url = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    msgs = [{"role": "user", "content": [{"type": "image", "image": images["1x2"]},
                                         {"type": "text", "text": "and"},
                                         {"type": "image_url", "image_url": {"url": url}}]}]
    out = llm.chat(msgs, GREEDY)[0]
    ids, want = _expected(ckpt, tok, tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True),
                          [images["1x2"], images["3x1"]])
    assert out.prompt_token_ids == ids and out.outputs[0].token_ids == want


def test_image_split_across_prefill_pieces(ckpt, images):
    """A 6-token budget cuts every image's patch tokens (2x2: 20 of them) across pieces."""
    eng = _engine(ckpt, max_num_batched_tokens=6, max_num_seqs=2, enable_prefix_caching=False)
    tok = eng.tokenizer
    reqs = [("x <|image|> y", [images["2x2"]]), ("<|image|><|image|> z", [images["3x1"], images["1x1"]])]
    calls = []
    model_features = eng.model.image_features
    eng.model.image_features = lambda pv: (calls.append(pv.shape[0]), model_features(pv))[1]
    try:
        outs = _run(eng, [(tok.encode(p), imgs) for p, imgs in reqs])
    finally:
        del eng.model.image_features
    for o, (p, imgs) in zip(outs, reqs):
        assert o.outputs[0].token_ids == _expected(ckpt, tok, tok.encode(p), imgs)[1]
    assert sum(calls) == 5 + 4 + 1  # every image's tiles went through the tower exactly once
    assert eng.encoder_cache.num_encoded == 3 and len(eng.encoder_cache) == 0


def test_preemption_recomputes_with_cached_features(ckpt, images):
    eng = _engine(ckpt, num_kv_blocks=16, max_num_batched_tokens=8, max_num_seqs=3, enable_prefix_caching=False)
    tok = eng.tokenizer
    preempted = []
    orig = eng.scheduler._preempt
    eng.scheduler._preempt = lambda s: (preempted.append(s.request_id), orig(s))[1]
    reqs = [("a <|image|> b", [images["1x2"]]), ("c <|image|> d", [images["3x1"]]), ("e <|image|>", [images["1x1"]])]
    sp = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
    outs = _run(eng, [(tok.encode(p), imgs) for p, imgs in reqs], sp)
    assert preempted, "the KV budget should force a preemption"
    for o, (p, imgs) in zip(outs, reqs):
        assert o.outputs[0].token_ids == _expected(ckpt, tok, tok.encode(p), imgs, 12)[1]
    assert eng.encoder_cache.num_encoded == 3  # the recompute reused the features


def test_prefix_cache_same_image_hits_other_image_does_not(ckpt, images):
    eng = _engine(ckpt)
    tok = eng.tokenizer
    p = tok.encode("Some shared words before the picture <|image|> and after it.")
    first = _run(eng, [(p, [images["2x2"]])])[0]
    s0 = eng.stats()
    same = _run(eng, [(p, [images["2x2"]])])[0]
    s1 = eng.stats()
    other_img = h.make_image(112, 112, seed=99)  # same size (same tokens), other pixels
    other = _run(eng, [(p, [other_img])])[0]
    s2 = eng.stats()
    assert same.outputs[0].token_ids == first.outputs[0].token_ids
    hit_same = s1["prefix_cache_hits"] - s0["prefix_cache_hits"]
    assert hit_same >= len(same.prompt_token_ids) - 4  # all but the last (partial) block
    # the other image: only the blocks wholly before its <|image_start|> are shared
    start = p.index(h.TOK["image"])
    assert s2["prefix_cache_hits"] - s1["prefix_cache_hits"] <= start // 4 * 4
    assert other.prompt_token_ids == first.prompt_token_ids
    assert other.outputs[0].token_ids == _expected(ckpt, tok, p, [other_img])[1]
    assert first.outputs[0].token_ids == _expected(ckpt, tok, p, [images["2x2"]])[1]


def test_errors_name_the_problem(ckpt, images):
    eng = _engine(ckpt, max_model_len=40)
    tok = eng.tokenizer
    with pytest.raises(ValueError, match=r"2 <\|image\|> token\(s\).*1 image"):
        eng.add_request("a", tok.encode("<|image|> <|image|>"), GREEDY, multi_modal_data={"image": images["1x1"]})
    with pytest.raises(ValueError, match=r"1 <\|image\|> token\(s\).*0 image"):
        eng.add_request("b", "text with <|image|> but no image", GREEDY)
    with pytest.raises(ValueError, match=r"for 2 image\(s\).*max_model_len is 40"):
        eng.add_request("c", "<|image|><|image|>", GREEDY, multi_modal_data={"image": [images["2x2"]] * 2})
    with pytest.raises(ValueError, match="modality"):
        eng.add_request("d", "<|image|>", GREEDY, multi_modal_data={"video": images["1x1"]})
    assert not eng.has_unfinished() and len(eng.encoder_cache.refs) == 0


def test_text_only_model_refuses_images(images):
    from amd_llama4.config import preset
    from amd_llama4.model.llama4 import Llama4ForCausalLM

    model = Llama4ForCausalLM(preset("tiny-scout", vision_config=None)).init_random(0)
    eng = LLMEngine(EngineArgs(model="tiny-scout", num_kv_blocks=16, block_size=8), model=model)
    with pytest.raises(ValueError, match="no vision tower"):
        eng.add_request("a", "<|image|> hi", GREEDY, multi_modal_data={"image": images["1x1"]})
    eng.add_request("b", "<|image|> as plain text", SamplingParams(max_tokens=2))  # text-only still works
    while eng.has_unfinished():
        eng.step()


def test_tiny_preset_takes_images(images):
    """The tiny presets ship a tower and image tokens: images work offline out of the box."""
    llm = LLM("tiny-scout", num_kv_blocks=32, block_size=8)
    msgs = [{"role": "user", "content": [{"type": "image", "image": images["1x2"]},
                                         {"type": "text", "text": "What is this?"}]}]
    out = llm.chat(msgs, SamplingParams(temperature=0, max_tokens=4))[0]
    assert len(out.outputs[0].token_ids) >= 1
    assert out.prompt_token_ids.count(511) == 3 * 4  # 1x2 grid + thumbnail, 4 patch tokens per tile
    assert llm.engine.encoder_cache.num_encoded == 1
