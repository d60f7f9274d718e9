"""The smaller gaps of issue 15: each a config a new user would try."""

from __future__ import annotations

import pytest
import torch

from interprune import shrink
from interprune.errors import InterpruneError
from interprune.weights.shrink import plan_for

from .families import FAMILIES


def build(family: str, **changes):
    config_cls, fields, model_cls, *_ = FAMILIES[family]
    torch.manual_seed(0)
    return model_cls(config_cls(**{**fields, **changes})).eval()


def test_gemma3_layer_types_follow_fewer_layers():
    types = ["full_attention", "sliding_attention", "full_attention"]
    small, _ = shrink(build("gemma3_text", num_hidden_layers=3, layer_types=types), {"num_hidden_layers": 2}, "select")
    assert small.config.layer_types == types[:2]
    with pytest.raises(InterpruneError, match="layer_types"):
        shrink(build("gemma3_text", num_hidden_layers=3, layer_types=types), {"num_hidden_layers": 4}, "select")


def test_segformer_head_counts_must_divide_each_stage():
    with pytest.raises(InterpruneError, match=r"stage 0 has width 16"):
        shrink(build("segformer"), {"num_attention_heads": [3, 5]}, "select")


def test_d_fine_with_one_decoder_layer_is_refused_in_one_readable_line():
    with pytest.raises(InterpruneError, match="too few layers") as err:
        shrink(build("d_fine"), {"decoder_layers": 1}, "select")
    assert "\n" not in str(err.value) and "We found" not in str(err.value)


def test_siglip_pooling_head_and_wav2vec2_position_conv_are_planned_or_explained():
    siglip = build("siglip")
    plan = plan_for(siglip, {"vision_config.hidden_size": 16, "vision_config.intermediate_size": 32})
    assert not plan.unplanned and "vision_model.head.attention.in_proj_weight" in plan.fused
    wav2vec2 = build("wav2vec2")
    plan = plan_for(wav2vec2, {"hidden_size": 16, "intermediate_size": 32})
    assert plan.unplanned == ["encoder.pos_conv_embed.conv.parametrizations.weight.original1"]
    assert "grouped convolution" in plan.reasons[plan.unplanned[0]]
