"""Exact oracles of a shrink, for every family of the matrix (issue 15).

* FFN-only cut: the small model equals the source with the dropped units' readers zeroed, for ``first``,
  ``magnitude`` and ``select`` at factors 2 and 5/6 (the choice each method made, applied to every axis);
* head cut (families whose head width is its own config key): the same with the dropped heads' output
  projection columns zeroed;
* a fused family equals its unfused twin given the same weights (Phi3 and Llama).
"""

from __future__ import annotations

import pytest
import torch

from interprune import shrink
from interprune.plan import Kind
from interprune.shrink import dummy_inputs, plan_for

from .families import FAMILIES
from .oracles import max_error, outputs, perturbed, random_inputs, zero_dropped

# config keys of each family's FFN widths: integer widths, or ("ratio", key) for an mlp ratio
FFN = {
    **{f: ("intermediate_size",) for f in ("bert", "roberta", "vit", "deit", "yolos", "llama", "qwen2", "qwen3",
                                           "mistral", "gemma2", "gemma3_text", "phi3", "mixtral", "gpt_neox",
                                           "modernbert", "electra", "beit", "dpt", "wav2vec2")},
    "distilbert": ("hidden_dim",), "t5": ("d_ff",), "opt": ("ffn_dim",), "falcon": ("ffn_hidden_size",),
    "gpt2": ("n_inner",), "dinov2": ("mlp_ratio",), "swin": ("mlp_ratio",), "swinv2": ("mlp_ratio",),
    "mobilevit": ("mlp_ratio",),
    **{f: ("encoder_ffn_dim", "decoder_ffn_dim") for f in ("whisper", "detr", "conditional_detr", "table_transformer",
                                                           "deformable_detr", "rt_detr", "dab_detr", "d_fine")},
    "clip": ("text_config.intermediate_size", "vision_config.intermediate_size"),
    "siglip": ("text_config.intermediate_size", "vision_config.intermediate_size"),
    "qwen2_moe": ("moe_intermediate_size", "shared_expert_intermediate_size"),
}
# families left out, and why
NO_FFN_ORACLE = {
    "convnext": "its FFN width is 4x the stage width, not a config key",
    "convnextv2": "its FFN width is fixed, and its GRN normalises over the FFN units (a dropped unit is not a zero)",
    "resnet": "no FFN", "bloom": "its FFN width is 4x the hidden size, not a config key",
    "mamba": "no FFN: its inner width feeds a state-space scan", "segformer": "mlp_ratios feed a depthwise conv",
}
HEADS = {f: {"num_attention_heads": 2, "head_dim": 8} for f in ("llama", "qwen3", "mistral", "gemma2", "gemma3_text",
                                                               "mixtral")}
HEADS["t5"] = {"num_heads": 2}
FACTORS = (1 / 2, 5 / 6)
METHODS = ("first", "magnitude", "select")


def source(family: str):
    config_cls, fields, model_cls, *_ = FAMILIES[family]
    torch.manual_seed(0)
    return perturbed(model_cls(config_cls(**fields)).eval())


def ffn_overrides(model, family: str, factor: float) -> dict:
    out = {}
    for key in FFN[family]:
        config = model.config
        for part in key.split(".")[:-1]:
            config = getattr(config, part)
        leaf = key.split(".")[-1]
        value = getattr(config, leaf)
        if value is None:  # derived (GPT-2's n_inner, Falcon's ffn_hidden_size): 4x the width
            value = 4 * config.hidden_size
        align = 4 if family in ("mixtral", "qwen2_moe") else 1  # grouped expert matmuls want 16-byte rows
        out[key] = value * factor if isinstance(value, float) else max(1, round(value * factor / align) * align)
    return out


def check(model, overrides: dict, method: str, kinds: tuple) -> float:
    small, report = shrink(model, overrides, method)
    plan = plan_for(model, overrides)
    assert not plan.unplanned, plan.unplanned
    reference = zero_dropped(model, plan, {k: v for k, v in report.choices.items()}, kinds)
    inputs = random_inputs(model, dummy_inputs(model))
    return max_error(outputs(small, inputs), outputs(reference, inputs))


@pytest.mark.parametrize("family", sorted(FFN))
def test_ffn_cut_equals_the_source_with_dropped_units_zeroed(family):
    model = source(family)
    for factor in FACTORS:
        for method in METHODS:
            error = check(model, ffn_overrides(model, family, factor), method, (Kind.FFN,))
            assert error < 1e-5, (family, factor, method, error)


@pytest.mark.parametrize("family", sorted(HEADS))
def test_head_cut_equals_the_source_with_dropped_heads_zeroed(family):
    model = source(family)
    for method in METHODS:
        error = check(model, HEADS[family], method, (Kind.HEADS, Kind.KV_HEADS))
        assert error < 1e-5, (family, method, error)


def test_every_family_has_an_ffn_oracle_or_a_reason():
    assert set(FAMILIES) == set(FFN) | set(NO_FFN_ORACLE)
