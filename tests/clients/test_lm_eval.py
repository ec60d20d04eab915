"""lm-eval (EleutherAI's harness, a client we did not write) against `amd-llama4 serve`: a
multiple-choice loglikelihood task through `local-completions` (echo + logprobs over token-id prompts,
batched), a generate_until task through `local-completions` and one through `local-chat-completions`
(chat template applied by the server). The tasks and their data are files under lm_eval_tasks/ (no
downloads). Each metric must equal the one computed directly with the engine in this process: every
choice's continuation log-prob from prompt_logprobs, greedy generations with the same stop strings."""
from __future__ import annotations

import numpy as np
import pytest

from .conftest import REPO, need

TASKS = REPO / "tests" / "clients" / "lm_eval_tasks"
MC, GEN, CHAT = "amd_llama4_docstring_mc", "amd_llama4_docstring_gen", "amd_llama4_docstring_chat"
LL_TOL = 2e-4  # fp32 on CPU: the server's batched steps and this process's threads round differently

SHARP = ("the metric is 0 or 1, so 'equal to the direct computation' checks little: after retraining the tiny "
         "weights, rerun tests/clients/lm_eval_tasks/make_data.py")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def lm_eval_runs(served, monkeypatch_module, tmp_path_factory):
    """Runs the three tasks once: {task: (metrics, {doc_id: sample})}."""
    cache = tmp_path_factory.mktemp("hf")
    for k, v in {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(cache),
                 "HF_DATASETS_CACHE": str(cache / "datasets"), "TOKENIZERS_PARALLELISM": "false"}.items():
        monkeypatch_module.setenv(k, v)
    monkeypatch_module.chdir(REPO)  # the task files name their data relative to the repository root
    lm_eval = need("lm_eval")
    from lm_eval.tasks import TaskManager

    from amd_llama4.engine.tokenizer import tiny_tokenizer_dir

    tm = TaskManager(include_path=str(TASKS))
    common = dict(task_manager=tm, bootstrap_iters=0, log_samples=True, verbosity="WARNING")
    completions = lm_eval.simple_evaluate(
        model="local-completions",
        model_args={"model": served.model, "base_url": served.url + "/v1/completions",
                    "tokenizer_backend": "huggingface", "tokenizer": str(tiny_tokenizer_dir()),
                    "batch_size": 8, "max_retries": 1, "timeout": 60},
        tasks=[MC, GEN], **common)
    chat = lm_eval.simple_evaluate(
        model="local-chat-completions",
        model_args={"model": served.model, "base_url": served.url + "/v1/chat/completions",
                    "max_retries": 1, "timeout": 60},
        tasks=[CHAT], apply_chat_template=True, **common)
    out = {}
    for res in (completions, chat):
        for task, metrics in res["results"].items():
            out[task] = (metrics, {s["doc_id"]: s for s in res["samples"][task]})
    return out


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


def _encode_pair(tok, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """lm-eval's split of (context, continuation) into ids for causal models: trailing spaces of the
    context move to the continuation, the whole string is encoded once (no BOS: add_bos_token is off)
    and the continuation is what follows the context's own encoding."""
    n = len(context) - len(context.rstrip())
    if n:
        context, continuation = context[:-n], context[-n:] + continuation
    whole = tok.encode(context + continuation, add_bos=False)
    ctx = tok.encode(context, add_bos=False)
    return whole[:len(ctx)], whole[len(ctx):]


def test_multiple_choice_acc_equals_direct_loglikelihoods(lm_eval_runs, direct_llm):
    from amd_llama4 import SamplingParams

    metrics, samples = lm_eval_runs[MC]
    assert sorted(samples) == list(range(20))
    docs = [samples[i]["doc"] for i in range(20)]
    pairs = [_encode_pair(direct_llm.tokenizer, d["context"], " " + c) for d in docs for c in d["choices"]]
    outs = direct_llm.generate([ctx + cont for ctx, cont in pairs], SamplingParams(max_tokens=0, prompt_logprobs=1))
    lls, greedy = [], []
    for (ctx, cont), o in zip(pairs, outs):
        plp = o.prompt_logprobs[len(ctx):]
        assert len(plp) == len(cont) > 0
        lls.append(sum(lp.logprob for lp, _ in plp))
        greedy.append(all(top[0].token_id == lp.token_id for lp, top in plp))

    acc = acc_norm = 0.0
    k = 0
    for doc_id, d in enumerate(docs):
        got = [r[0] for r in samples[doc_id]["resps"]]
        n = len(d["choices"])
        mine = np.array(lls[k:k + n])
        np.testing.assert_allclose([g[0] for g in got], mine, rtol=0, atol=LL_TOL, err_msg=d["context"])
        assert [g[1] for g in got] == greedy[k:k + n], d["context"]
        acc += float(np.argmax(mine) == d["gold"])
        acc_norm += float(np.argmax(mine / np.array([float(len(c)) for c in d["choices"]])) == d["gold"])
        k += n
    assert metrics["acc,none"] == acc / len(docs)
    assert metrics["acc_norm,none"] == acc_norm / len(docs)
    assert 0.0 < metrics["acc,none"] < 1.0, SHARP


def _greedy_texts(outs) -> list[str]:
    return [o.outputs[0].text for o in outs]


def test_generate_until_completions_equals_direct_greedy(lm_eval_runs, direct_llm):
    from amd_llama4 import SamplingParams

    metrics, samples = lm_eval_runs[GEN]
    docs = [samples[i]["doc"] for i in sorted(samples)]
    assert len(docs) == 10
    # what lm-eval asks for: the task's until plus the tokenizer's eos string, 16 new tokens, greedy
    params = SamplingParams(temperature=0, max_tokens=16, stop=["\n", ".", "<|eot|>"])
    texts = _greedy_texts(direct_llm.generate(
        [direct_llm.tokenizer.encode(d["context"], add_bos=False) for d in docs], params))
    assert [samples[i]["resps"][0][0] for i in sorted(samples)] == texts
    exact = sum(t.strip() == d["target"] for t, d in zip(texts, docs)) / len(docs)
    assert metrics["exact_match,strip"] == exact
    assert 0.0 < exact < 1.0, SHARP


def test_generate_until_chat_equals_direct_greedy(lm_eval_runs, direct_llm):
    from amd_llama4 import SamplingParams

    metrics, samples = lm_eval_runs[CHAT]
    docs = [samples[i]["doc"] for i in sorted(samples)]
    assert len(docs) == 10
    params = SamplingParams(temperature=0, max_tokens=24, stop=["\n"])
    texts = _greedy_texts(direct_llm.chat([[{"role": "user", "content": d["question"]}] for d in docs], params))
    assert [samples[i]["resps"][0][0] for i in sorted(samples)] == texts
    exact = sum(t.strip() == d["target"] for t, d in zip(texts, docs)) / len(docs)
    assert metrics["exact_match,strip"] == exact
    assert 0.0 < exact < 1.0, SHARP
