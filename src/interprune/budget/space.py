"""The search space: which config fields a budget may change, and the candidate targets they make.

Knobs are data (:data:`KNOBS`), as the dimension plan's rules are: each names the config fields it scales
together (a residual width is ``d_model`` in DETR and ``hidden_size`` in BERT; a backbone's stage widths are
``backbone_config.hidden_sizes``). A candidate is one fraction per knob; widths are rounded to a multiple
(8 by default, 64 for accelerators that want it), heads stay whole and keep their key/value groups, depths
keep at least one layer per stack and stage.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any

from transformers import PretrainedConfig

__all__ = ["Knob", "KNOBS", "knobs_for", "candidate_overrides", "grid"]


@dataclass(frozen=True)
class Knob:
    """Config fields scaled together by one fraction; ``options`` in the order a small grid keeps them."""

    name: str
    kind: str  # width | heads | depth
    keys: tuple[str, ...]
    options: tuple[float, ...]
    keeps: int = 0  # options it keeps beyond the others when the grid is trimmed (the backbone: most of the time)


WIDTHS, DEPTHS, HEADS = (1.0, 0.5, 0.75, 0.25, 0.375), (1.0, 0.5, 0.75), (1.0, 0.5)
KNOBS: tuple[Knob, ...] = (
    # backbone stages of a detector's (or any model's) backbone_config: Hugging Face ResNet, ConvNeXt, Swin
    Knob("backbone.width", "width", ("backbone_config.hidden_sizes", "backbone_config.embedding_size",
                                     "backbone_config.embed_dim"), WIDTHS, keeps=1),
    Knob("backbone.depth", "depth", ("backbone_config.depths",), DEPTHS, keeps=1),
    Knob("residual", "width", ("d_model", "hidden_size", "n_embd", "dim"), WIDTHS),
    Knob("ffn", "width", ("encoder_ffn_dim", "decoder_ffn_dim", "intermediate_size", "d_ff", "hidden_dim",
                          "n_inner"), WIDTHS),
    Knob("layers", "depth", ("encoder_layers", "decoder_layers", "num_hidden_layers", "n_layer", "num_layers",
                             "n_layers"), DEPTHS),
    Knob("heads", "heads", ("encoder_attention_heads", "decoder_attention_heads", "num_attention_heads",
                            "n_head", "n_heads", "num_key_value_heads"), HEADS),
)


def _get(config: PretrainedConfig, key: str) -> Any:
    value: Any = config
    for part in key.split("."):
        value = getattr(value, part, None)
        if value is None:
            return None
    return value


def _alias(config: PretrainedConfig, key: str) -> bool:
    """Whether ``key`` only names another field (DETR's ``hidden_size`` is its ``d_model``)."""
    head, _, leaf = key.rpartition(".")
    owner = _get(config, head) if head else config
    return leaf in getattr(owner, "attribute_map", {})


def _usable(value: Any) -> bool:
    return (isinstance(value, int) and not isinstance(value, bool) and value > 0) or (
        isinstance(value, (list, tuple)) and bool(value) and all(isinstance(v, int) and v > 0 for v in value))


def knobs_for(config: PretrainedConfig, fixed: dict[str, Any]) -> list[tuple[Knob, dict[str, Any]]]:
    """The knobs this config has, each with its fields' source values; knobs whose fields ``fixed`` sets
    (``--set``) are left out: what the user set stays as set."""
    found = []
    for knob in KNOBS:
        values = {k: _get(config, k) for k in knob.keys if _usable(_get(config, k)) and not _alias(config, k)}
        if knob.kind == "heads" and "num_key_value_heads" in values:
            if values["num_key_value_heads"] == values.get("num_attention_heads"):
                del values["num_key_value_heads"]  # no grouping: heads alone
        if knob.kind == "depth" and all(v == 1 for x in values.values() for v in (x if isinstance(x, list) else [x])):
            continue  # one layer per stack or stage: nothing to cut
        if values and not any(k in fixed for k in values):
            found.append((knob, values))
    return found


def _round(value: float, multiple: int) -> int:
    return max(multiple, int(round(value / multiple)) * multiple)


def _scaled(kind: str, value: Any, fraction: float, multiple: int) -> Any:
    if isinstance(value, (list, tuple)):
        return [_scaled(kind, v, fraction, multiple) for v in value]
    if kind == "depth":
        return max(1, int(round(value * fraction)))
    return value if fraction == 1 else min(value, _round(value * fraction, multiple)) if value >= multiple else value


def candidate_overrides(knobs: list[tuple[Knob, dict[str, Any]]], fractions: tuple[float, ...],
                        multiple: int) -> dict[str, Any]:
    """The config overrides of one candidate: each knob's fields scaled by its fraction. Head counts become
    whole heads that divide the new width, with key/value heads that divide the query heads."""
    out: dict[str, Any] = {}
    for (knob, values), fraction in zip(knobs, fractions):
        if fraction == 1:
            continue
        if knob.kind != "heads":
            for key, value in values.items():
                out[key] = _scaled(knob.kind, value, fraction, multiple)
            continue
        for key, value in values.items():
            if key == "num_key_value_heads":
                continue
            out[key] = max(1, int(round(value * fraction)))
        kv = values.get("num_key_value_heads")
        if kv is not None:
            heads = out.get("num_attention_heads", values.get("num_attention_heads", kv))
            out["num_key_value_heads"] = max(d for d in range(1, max(1, int(round(kv * fraction))) + 1)
                                             if heads % d == 0)
    return out


def grid(knobs: list[tuple[Knob, dict[str, Any]]], max_candidates: int) -> list[tuple[float, ...]]:
    """Every combination of the knobs' options, trimmed to at most ``max_candidates``: the knob with the most
    options left (less what it ``keeps``) gives up its last one (the latest in the table first, on a tie) until
    the grid fits."""
    options = [list(knob.options) for knob, _ in knobs]
    while math.prod(len(o) for o in options) > max(1, max_candidates):
        most = max(range(len(options)), key=lambda i: (len(options[i]) - knobs[i][0].keeps, i))
        if len(options[most]) == 1:
            break
        options[most].pop()
    return list(itertools.product(*options))
