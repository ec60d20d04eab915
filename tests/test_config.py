import json

import pytest

from amd_llama4 import Llama4Config, preset
from amd_llama4.config import PRESETS, QuantConfig


def test_presets_have_released_shapes():
    scout, mav = preset("scout"), preset("maverick")
    assert (scout.num_local_experts, mav.num_local_experts) == (16, 128)
    assert scout.moe_layers == list(range(48)) and mav.moe_layers == list(range(1, 48, 2))
    assert [i for i in range(48) if not scout.uses_rope(i)] == list(range(3, 48, 4))
    assert scout.use_qk_norm and not mav.use_qk_norm and mav.rope_scaling is None
    assert scout.rope_scaling.factor == 16 and scout.rope_scaling.low_freq_factor == 1
    for name in PRESETS:
        preset(name)


def test_from_pretrained_flat_nested_and_v5(tmp_path):
    flat = {"model_type": "llama4_text", "num_hidden_layers": 8, "interleave_moe_layer_step": 2,
            "attn_temperature_tuning": 4, "rope_scaling": {"rope_type": "llama3", "factor": 8.0,
                                                           "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                                           "original_max_position_embeddings": 8192}}
    (tmp_path / "config.json").write_text(json.dumps(flat))
    c = Llama4Config.from_pretrained(tmp_path)
    assert c.moe_layers == [1, 3, 5, 7] and c.no_rope_layers == [1, 1, 1, 0, 1, 1, 1, 0]
    assert c.attn_temperature_tuning is True and c.rope_scaling.high_freq_factor == 4.0
    nested = {"model_type": "llama4", "text_config": dict(flat, model_type="llama4_text"), "tie_word_embeddings": False}
    (tmp_path / "config.json").write_text(json.dumps(nested))
    assert Llama4Config.from_pretrained(tmp_path) == c
    v5 = {"model_type": "llama4_text", "num_hidden_layers": 4, "moe_layers": [0, 2],
          "rope_parameters": {"rope_type": "llama3", "rope_theta": 1234.0, "factor": 16.0, "low_freq_factor": 1.0,
                              "high_freq_factor": 1.0, "original_max_position_embeddings": 8192}}
    (tmp_path / "config.json").write_text(json.dumps(v5))
    c = Llama4Config.from_pretrained(tmp_path)
    assert c.rope_theta == 1234.0 and c.rope_scaling.factor == 16.0 and c.moe_layers == [0, 2]


def test_bad_fields_are_named():
    with pytest.raises(ValueError, match="num_experts_per_tok"):
        Llama4Config(num_local_experts=4, num_experts_per_tok=5)
    with pytest.raises(ValueError, match="moe_layers"):
        Llama4Config(num_hidden_layers=2, moe_layers=[5])
    with pytest.raises(ValueError, match="rope_scaling type 'yarn'"):
        Llama4Config.from_dict({"rope_scaling": {"rope_type": "yarn", "factor": 2.0}})
    with pytest.raises(ValueError, match="QuantConfig.method"):
        QuantConfig(method="int3")
