"""Tensor names as transformers 5 loads and saves them.

transformers 5 renames some checkpoint keys as it loads them (DETR's ``backbone.conv_encoder`` becomes
``backbone``, ``out_proj`` becomes ``o_proj``, ``layers.N.fc1`` becomes ``layers.N.mlp.fc1``) and renames
them back as it saves, so files keep the names every earlier release reads. A streamed shrink reads and
writes tensors itself, one at a time, so it has to apply the same renamings both ways: without them it
finds no source tensor for most of DETR and writes names that ``save_pretrained`` never writes. The rules
are transformers' own (``get_model_conversion_mapping``), applied as its loader and saver apply them. A
key that a *converter* handles (experts stacked from one tensor each, q|k|v fused on load) needs several
tensors at once, so such a model is not streamed (``None``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

__all__ = ["load_names", "save_names"]


def _split(conversions: list) -> tuple[list, list]:
    from transformers.core_model_loading import WeightConverter, WeightRenaming

    return ([c for c in conversions if isinstance(c, WeightRenaming)],
            [c for c in conversions if isinstance(c, WeightConverter)])


def load_names(model: Any, keys: Iterable[str]) -> dict[str, str] | None:
    """The model's name for each checkpoint key (model name -> key), as ``from_pretrained`` renames them,
    base-model prefix added or dropped included; ``None`` when a key needs a converter."""
    from transformers.conversion_mapping import get_model_conversion_mapping
    from transformers.core_model_loading import rename_source_key

    renamings, converters = _split(get_model_conversion_mapping(model))
    expected, prefix = model.state_dict(), getattr(model, "base_model_prefix", None) or None
    out = {}
    for key in keys:
        name, converted = rename_source_key(key, renamings, converters, prefix, expected)
        if name not in expected and key in expected:  # as the loader: the key as it is, prefix fixed only
            name, converted = rename_source_key(key, [], [], prefix, expected)
        if converted is not None:
            return None
        out[name] = key
    return out


def save_names(model: Any, names: Iterable[str]) -> dict[str, str] | None:
    """The name ``save_pretrained`` gives each of the model's tensors (model name -> saved name), or ``None``
    when a tensor is saved through a converter. A model built from its config (not loaded) is saved
    without the legacy renamings and without prefix changes, as transformers does."""
    from transformers.conversion_mapping import get_model_conversion_mapping
    from transformers.core_model_loading import PrefixChange, apply_converters, apply_renamings

    conversions = getattr(model, "_weight_conversions", None)
    if conversions is None:
        conversions = [c for c in get_model_conversion_mapping(model, add_legacy=False)
                       if not isinstance(c, PrefixChange)]
    renamings, converters = _split([c.reverse_transform() for c in conversions[::-1]])
    out = {}
    for name in names:
        if apply_converters(name, converters)[1] is not None:
            return None
        out[name] = apply_renamings(name, renamings)
    return out
