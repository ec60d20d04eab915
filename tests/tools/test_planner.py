"""Planner figures against hand calculations (bytes; GB = 1e9)."""
import json

import pytest

from amd_llama4 import cli
from amd_llama4.config import preset
from amd_llama4.tools import planner
from amd_llama4.tools.planner import PlanInput, plan

H, D, V, HQ, HKV, I, IMLP = 5120, 128, 202048, 40, 8, 8192, 16384
ATTN_LAYER = H * HQ * D + 2 * H * HKV * D + HQ * D * H  # q, k, v, o = 62,914,560
EXPERT = 3 * H * I  # gate, up, down of one expert = 125,829,120
KV_TOKEN_LAYER_BF16 = 2 * HKV * D * 2  # K and V, 8 heads x 128 dims x 2 bytes = 4096


def test_maverick_fp8_weights_about_400_gb():
    # 48 attention layers, 24 MoE layers (128 experts + shared expert), 24 dense MLP layers (16384).
    linear = 48 * ATTN_LAYER + 24 * 128 * EXPERT + 24 * EXPERT + 24 * 3 * H * IMLP
    assert linear == 398_626_652_160
    bf16_rest = 2 * V * H + 24 * H * 128 + (48 * 2 * H + H)  # embedding + lm_head, router, norms
    expected = linear * 1 + bf16_rest * 2  # = 402,797,045,760 bytes
    r = plan(PlanInput(model="maverick", gpu="mi300x", num_gpus=8, weights="fp8", kv="fp8", context=8192))
    assert r["weights_bytes_total"] == expected
    assert 395e9 < r["weights_bytes_total"] < 410e9
    assert r["params_total"] == linear + bf16_rest  # ~400.7 B parameters
    norms = 48 * 2 * H + H
    assert r["weights_bytes_per_gpu"] == pytest.approx((expected - 2 * norms) / 8 + 2 * norms)


def test_scout_bf16_weights():
    linear = 48 * ATTN_LAYER + 48 * 16 * EXPERT + 48 * EXPERT  # all 48 layers MoE, no dense MLP
    rest = 2 * V * H + 48 * H * 16 + (48 * 2 * H + H)
    r = plan(PlanInput(model="scout", gpu="mi300x", num_gpus=1, weights="bf16", context=8192))
    assert r["weights_bytes_total"] == 2 * (linear + rest)  # ~215.5 GB
    assert r["fits"] is False  # 215 GB of weights do not fit one 192 GB MI300X
    assert plan(PlanInput(model="scout", gpu="mi300x", num_gpus=2, weights="bf16", context=8192))["fits"]


def test_scout_int4_fits_one_h100():
    r = plan(PlanInput(model="scout", gpu="h100", num_gpus=1, weights="int4", kv="bf16", context=8192))
    linear = 48 * ATTN_LAYER + 48 * 16 * EXPERT + 48 * EXPERT
    rest = 2 * V * H + 48 * H * 16 + (48 * 2 * H + H)
    assert r["weights_bytes_total"] == pytest.approx(linear * (0.5 + 2 / 128) + rest * 2)
    assert r["fits"] and r["memory_bytes_per_gpu"] < 0.9 * 80e9


def test_scout_10m_tokens_fp8_kv_global_layers_246_gb():
    cfg = preset("scout")
    assert planner.layer_kinds(cfg) == (12, 36)
    global_kv = 10_000_000 * 12 * 2 * 8 * 128 * 1  # tokens x global layers x (K,V) x heads x dim x 1 byte
    assert global_kv == 245_760_000_000  # 245.8 GB
    local_kv = 36 * 8192 * 2 * 8 * 128  # chunked layers hold one 8192-token chunk
    assert planner.kv_bytes_per_sequence(cfg, "fp8", 10_000_000) == global_kv + local_kv
    r = plan(PlanInput(model="scout", gpu="mi300x", num_gpus=8, weights="bf16", kv="fp8", context=10_000_000))
    assert r["kv_bytes_per_token_global_layers"] * 10_000_000 == global_kv
    assert r["kv_bytes_per_token"] == 48 * 2 * 8 * 128
    assert r["kv_bytes_per_gpu"] == (global_kv + local_kv) / 8
    assert r["fits"]


def test_chunked_layers_stop_growing_after_one_chunk():
    cfg = preset("maverick")
    kv = lambda n: planner.kv_bytes_per_sequence(cfg, "bf16", n)  # noqa: E731
    assert kv(1) == 48 * KV_TOKEN_LAYER_BF16
    assert kv(8192) == 48 * 8192 * KV_TOKEN_LAYER_BF16
    assert kv(8193) - kv(8192) == 12 * KV_TOKEN_LAYER_BF16  # only the global layers grow
    assert kv(100_000) - kv(50_000) == 50_000 * 12 * KV_TOKEN_LAYER_BF16


@pytest.mark.parametrize("budget", [1e6, 48 * 4096 * 5000.0, 1.6e9, 7e10, 1e12])
def test_max_context_inverts_kv_size(budget):
    cfg = preset("scout")
    n = planner.max_context_for(cfg, "bf16", budget)
    assert planner.kv_bytes_per_sequence(cfg, "bf16", n) <= budget < planner.kv_bytes_per_sequence(cfg, "bf16", n + 1)


def test_max_context_and_concurrency_consistent_with_budget():
    inp = PlanInput(model="maverick", gpu="h200", num_gpus=8, weights="fp8", kv="fp8", context=32768, concurrency=16)
    r = plan(inp)
    budget = (r["usable_bytes_per_gpu"] - r["weights_bytes_per_gpu"] - r["workspace_bytes_per_gpu"]
              - r["vision_bytes_per_gpu"]) * 8
    assert r["max_concurrency"] * r["kv_bytes_per_sequence"] <= budget < (r["max_concurrency"] + 1) * r[
        "kv_bytes_per_sequence"]
    cfg = preset("maverick")
    per_seq = budget / 16
    assert planner.kv_bytes_per_sequence(cfg, "fp8", r["max_context_memory"]) <= per_seq
    assert planner.kv_bytes_per_sequence(cfg, "fp8", r["max_context_memory"] + 1) > per_seq
    assert r["max_context"] == min(r["max_context_memory"], 1_048_576)


def test_decode_roofline_by_hand():
    # Scout bf16 on 8 x MI300X, one user at 8192 tokens: each step reads every non-expert weight, one expert
    # per MoE layer (top-1, one token) and the whole KV of the sequence; FLOPs are far below the roof.
    r = plan(PlanInput(model="scout", gpu="mi300x", num_gpus=8, weights="bf16", kv="bf16", context=8192))
    non_expert = 2 * (48 * ATTN_LAYER + 48 * EXPERT + V * H + 48 * H * 16 + 48 * 2 * H + H)  # embedding excluded
    touched = 48 * 1 * EXPERT * 2
    kv = 48 * 8192 * KV_TOKEN_LAYER_BF16
    step = (non_expert + touched + kv) / (8 * 5.3e12)
    assert r["decode_bound"] == "memory"
    assert r["decode_step_s"] == pytest.approx(step, rel=1e-12)
    assert r["decode_tokens_per_s"] == pytest.approx(1 / step, rel=1e-12)
    assert r["decode_tokens_per_s_per_node"] == pytest.approx(1 / step, rel=1e-12)  # 8 GPUs = one node
    # active parameters per token: attention, shared expert, one routed expert, router, lm_head
    assert r["params_active_per_token"] == 48 * ATTN_LAYER + 2 * 48 * EXPERT + 48 * H * 16 + V * H


def test_prefill_is_compute_bound_and_faster_with_fp8():
    base = dict(model="maverick", gpu="mi300x", num_gpus=8, kv="fp8", context=8192)
    bf = plan(PlanInput(weights="bf16", **base))
    f8 = plan(PlanInput(weights="fp8", **base))
    assert bf["prefill_bound"] == "compute" == f8["prefill_bound"]
    # FP8 doubles the peak (2615 vs 1307 TFLOP/s on MI300X)
    assert f8["prefill_tokens_per_s"] / bf["prefill_tokens_per_s"] == pytest.approx(2615 / 1307, rel=1e-9)


def test_concurrency_touches_more_experts():
    # Maverick fp8: C tokens per step touch 128 * (1 - (127/128)^C) distinct experts per MoE layer on average.
    base = dict(model="maverick", gpu="mi300x", num_gpus=8, weights="fp8", kv="fp8", context=4096)
    non_expert = (48 * ATTN_LAYER + 24 * EXPERT + 24 * 3 * H * IMLP) + 2 * (V * H + 24 * H * 128 + 48 * 2 * H + H)
    for c in (1, 64):
        touched = 128 * (1 - (127 / 128) ** c)  # 1 expert for one token, ~50 for 64
        nbytes = non_expert + 24 * touched * EXPERT + c * 48 * 4096 * (2 * 8 * 128)
        r = plan(PlanInput(concurrency=c, **base))
        assert r["decode_bound"] == "memory"
        assert r["decode_step_s"] == pytest.approx(nbytes / (8 * 5.3e12), rel=1e-12)
        assert r["decode_tokens_per_s_total"] == pytest.approx(c / r["decode_step_s"], rel=1e-12)
    one, many = plan(PlanInput(concurrency=1, **base)), plan(PlanInput(concurrency=64, **base))
    assert many["decode_tokens_per_s_total"] > 4 * one["decode_tokens_per_s_total"]
    assert many["decode_tokens_per_s"] < one["decode_tokens_per_s"]


def test_bad_inputs_are_errors():
    with pytest.raises(ValueError, match="gpu 'mi250'"):
        PlanInput(gpu="mi250")
    with pytest.raises(ValueError, match="num_gpus"):
        PlanInput(num_gpus=0)


def test_cli_json(capsys):
    rc = cli.main(["plan", "--model", "maverick", "--gpu", "mi300x", "--num-gpus", "8", "--weights", "fp8",
                   "--kv", "fp8", "--context", "1048576", "--concurrency", "4", "--json"])
    assert rc == 0
    r = json.loads(capsys.readouterr().out)
    for k in ("weights_bytes_total", "weights_bytes_per_gpu", "kv_bytes_per_token", "kv_bytes_per_gpu",
              "workspace_bytes_per_gpu", "fits", "max_context", "max_concurrency", "decode_tokens_per_s",
              "decode_tokens_per_s_per_node", "prefill_tokens_per_s"):
        assert k in r, k
    assert r["input"]["concurrency"] == 4 and r["fits"] is True


def test_cli_text(capsys):
    assert cli.main(["plan", "--model", "scout", "--gpu", "h100", "--num-gpus", "1", "--weights", "bf16"]) == 0
    assert "DOES NOT FIT" in capsys.readouterr().out


# -- checkpoint folders: config.json and safetensors headers only ----------------------------------

@pytest.fixture(scope="module")
def released(tmp_path_factory):
    from tests.model.released import write_header_only

    root = tmp_path_factory.mktemp("released")
    return {k: (str(root / k), write_header_only(str(root / k), k)) for k in ("scout", "maverick", "maverick-fp8")}


@pytest.fixture
def no_reads(monkeypatch):
    from amd_llama4.model import safetensors_io

    def refuse(*a, **k):
        raise AssertionError("tensor data was read")

    monkeypatch.setattr(safetensors_io, "safe_open", refuse)


@pytest.mark.parametrize("kind", ["scout", "maverick", "maverick-fp8"])
def test_checkpoint_bytes_per_gpu_equal_the_loaded_model(kind, released, no_reads):
    import torch

    from amd_llama4.config import load_config
    from amd_llama4.model.loader import build_model
    from amd_llama4.parallel.tp import Parallel
    from amd_llama4.quant.fp8 import parse_quantization_config
    from tests.model.released import nbytes

    folder, table = released[kind]
    r = planner.checkpoint_report(folder)
    assert r["header_bytes"] == sum(nbytes(*v) for v in table.values())
    text = sum(nbytes(*v) for n, v in table.items() if n.startswith("language_model."))
    assert r["header_bytes_text"] == text and r["dtype"] == "bfloat16"
    assert r["bytes_per_gpu"][1] == sum(nbytes(*v) for v in table.values())  # one GPU: text + tower as stored
    cfg = load_config(folder)
    pre = parse_quantization_config(cfg.quantization_config)
    for w in (1, 4, 8):  # every rank's skeleton the loader fills, built from the config alone
        for rank in range(w):
            want = planner.rank_bytes(build_model(cfg, torch.bfloat16, "meta", pre, Parallel(rank, w)))
            assert r["bytes_per_gpu"][w] == want, (w, rank)
    assert r["bytes_per_gpu"][8] < r["bytes_per_gpu"][4] < r["bytes_per_gpu"][1]


def test_cli_plan_checkpoint_folder(released, capsys, no_reads):
    folder = released["maverick-fp8"][0]
    assert cli.main(["plan", "--model", folder, "--gpu", "mi300x", "--num-gpus", "8", "--context", "8192",
                     "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["input"]["weights"] == "fp8"  # read from the folder's quantization_config
    assert set(r["checkpoint"]["bytes_per_gpu"]) == {"1", "4", "8"}
    assert cli.main(["plan", "--model", folder, "--num-gpus", "8"]) == 0
    out = capsys.readouterr().out
    assert "checkpoint headers" in out and "tp 8:" in out
    with pytest.raises(ValueError, match="neither a preset nor a checkpoint folder"):
        PlanInput(model="/nonexistent/llama")


# -- images (tools/planner_vision.py) -----------------------------------------------------------------

def test_image_tokens_per_prompt_scout():
    r = plan(PlanInput(model="scout", gpu="mi300x", num_gpus=8, context=65536, images_per_prompt=8))
    v = r["vision"]
    # 336 px tiles of 14 px patches: 24 x 24 = 576 patches, pixel shuffle 0.5 -> 144 tokens per tile
    assert (v["max_patches"], v["tokens_per_tile"]) == (16, 144)
    assert v["image_patch_tokens_max"] == (16 + 1) * 144 == 2448
    assert v["image_tokens_max"] == 2448 + 16 + 3  # separators after tiles + start/image/end markers
    assert v["image_tokens_per_prompt_max"] == 8 * 2467
    assert v["encoder_cache_bytes_per_gpu"] == 8 * 2448 * H * 2  # projected features, bf16
    assert r["vision_bytes_per_gpu"] == (v["vision_weights_bytes_per_gpu"] + v["encoder_workspace_bytes_per_gpu"]
                                         + v["encoder_cache_bytes_per_gpu"])
    assert r["memory_bytes_per_gpu"] == pytest.approx(r["weights_bytes_per_gpu"] + r["kv_bytes_per_gpu"]
                                                      + r["workspace_bytes_per_gpu"] + r["vision_bytes_per_gpu"])
    assert 0 < v["encoder_images_per_s_max_tiles"] < 1e4
    none = plan(PlanInput(model="scout", gpu="mi300x", num_gpus=8, context=65536))["vision"]
    assert none["image_tokens_per_prompt_max"] == 0 and none["encoder_cache_bytes_per_gpu"] == 0
    assert none["vision_weights_bytes_per_gpu"] == v["vision_weights_bytes_per_gpu"]  # loaded regardless


def test_vision_params_equal_transformers():
    """The tower's parameter count against transformers' Llama4VisionModel + projector (meta device)."""
    import torch

    tr = pytest.importorskip("transformers")
    from transformers.models.llama4 import modeling_llama4 as hf

    from amd_llama4.tools.planner_vision import vision_params

    cfg = preset("scout")
    hf_cfg = tr.Llama4Config(**cfg.to_hf_multimodal_dict())
    with torch.device("meta"):
        mods = (hf.Llama4VisionModel(hf_cfg.vision_config), hf.Llama4MultiModalProjector(hf_cfg))
    assert vision_params(cfg) == sum(p.numel() for m in mods for p in m.parameters())
    assert 0.85e9 < vision_params(cfg) < 0.9e9


def test_images_bad_inputs(monkeypatch):
    with pytest.raises(ValueError, match="images_per_prompt must be >= 0"):
        PlanInput(model="scout", images_per_prompt=-1)
    with pytest.raises(ValueError, match="raise --context or lower --images-per-prompt"):
        plan(PlanInput(model="scout", context=4096, images_per_prompt=2))  # 2 x 2467 tokens
    monkeypatch.setattr(planner, "load_config", lambda m: preset("tiny-scout", vision_config=None))
    with pytest.raises(ValueError, match="no vision tower"):
        plan(PlanInput(model="tiny-scout", images_per_prompt=1))
    assert plan(PlanInput(model="tiny-scout"))["vision"] is None


def test_max_patches_from_preprocessor_config(tmp_path):
    from amd_llama4.tools.planner_vision import max_patches_of, plan_vision

    (tmp_path / "preprocessor_config.json").write_text(json.dumps({"max_patches": 3}))
    assert max_patches_of(str(tmp_path)) == 3 and max_patches_of("scout") == 16
    cfg = preset("tiny-scout")
    v = plan_vision(cfg, str(tmp_path), 2, 1, 1e15, 1e12)
    per_tile = cfg.vision_config.tokens_per_tile
    assert v["max_patches"] == 3 and v["image_patch_tokens_max"] == 4 * per_tile
    assert v["image_tokens_per_prompt_max"] == 2 * (4 * per_tile + 3 + 3)


def test_cli_images(capsys):
    assert cli.main(["plan", "--model", "maverick", "--weights", "fp8", "--context", "32768",
                     "--images-per-prompt", "4"]) == 0
    out = capsys.readouterr().out
    assert "4 per prompt, up to 2,467 tokens each" in out and "vision encoder" in out
    assert cli.main(["plan", "--model", "scout", "--context", "1000", "--images-per-prompt", "1"]) == 2
    assert "raise --context" in capsys.readouterr().out
