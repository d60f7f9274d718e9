"""Sizes never decide alone (issue 15): every family, built with its FFN as wide as its residual stream,
gets the same plan (the same tensor axes in each dimension) as with distinct widths."""

from __future__ import annotations

import pytest
import torch

from interprune.weights.shrink import plan_for

from .families import FAMILIES
from .test_oracles import FFN

HIDDEN = ("hidden_size", "d_model", "n_embd", "dim", "embed_dim")
# families the meta-device trace cannot run (DETR-family masks call Tensor.item()): sizes still decide there
UNTRACED = {"detr", "conditional_detr", "table_transformer", "dab_detr", "d_fine"}


def _get(fields: dict, key: str):
    for part in key.split(".")[:-1]:
        fields = fields.get(part, {})
    return fields.get(key.split(".")[-1])


def _put(fields: dict, key: str, value) -> dict:
    head, _, rest = key.partition(".")
    return {**fields, head: _put(fields.get(head, {}), rest, value) if rest else value}


def _hidden(fields: dict, key: str) -> tuple[str, int]:
    prefix = key.rpartition(".")[0]
    sub = _get(fields, prefix) if prefix else fields
    name = next(h for h in HIDDEN + ("hidden_sizes",) if isinstance((sub or {}).get(h), (int, list)))
    return (f"{prefix}.{name}" if prefix else name), sub[name]


def _plan(family: str, fields: dict):
    config_cls, _, model_cls, *_ = FAMILIES[family]
    with torch.device("meta"):
        source = model_cls(config_cls(**fields))
    overrides = {}
    for key in FFN[family]:
        hidden_key, hidden = _hidden(fields, key)
        overrides[hidden_key] = [h // 2 for h in hidden] if isinstance(hidden, list) else hidden // 2
        value = _get(fields, key)
        if isinstance(value, int) and not isinstance(value, bool):
            overrides[key] = value // 2
    return {frozenset((a.tensor, a.axis) for a in d.axes) for d in plan_for(source, overrides).dimensions}


@pytest.mark.parametrize("family", sorted(FFN))
def test_an_ffn_as_wide_as_the_stream_gets_the_same_plan(family):
    config_cls, fields = FAMILIES[family][:2]
    config = config_cls(**fields)
    coinciding = dict(fields)
    for key in FFN[family]:
        value = config
        for part in key.split("."):
            value = getattr(value, part)
        width = _hidden(fields, key)[1]
        coinciding = _put(coinciding, key, 1.0 if isinstance(value, float) else width)
        if value is None:  # GPT-2's n_inner, Falcon's ffn_hidden_size: derived (4x) unless set
            fields = _put(fields, key, 4 * width)
    if family in UNTRACED:
        pytest.xfail("no meta-device trace (Tensor.item() in the DETR-family masks): sizes still decide")
    assert _plan(family, coinciding) == _plan(family, fields)
