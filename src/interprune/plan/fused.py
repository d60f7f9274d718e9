"""Fused projections: one weight that holds several projections side by side (q|k|v, gate|up).

Each layout is one data entry (:data:`FUSED_LAYOUTS`), read from the family's modelling code in
transformers; the plan splits a fused tensor into its parts (virtual tensors named ``tensor#part``),
plans each part like an ordinary projection, and the transfer joins them again when it writes.

Orders (the output axis of a fused q|k|v projection with H query heads, K key/value heads of width d):

* ``blocks``: ``[q: H*d | k: K*d | v: K*d]`` (GPT-2 ``c_attn``, Phi3 ``qkv_proj`` with GQA, ModernBERT
  ``Wqkv``, Falcon with ``multi_query``: K = 1);
* ``per_head``: ``(H, 3, d)``, each head's q, k and v side by side (GPT-NeoX, BLOOM, classic Falcon);
* ``per_group``: ``(K, H/K + 2, d)``, each key/value group's queries then its k and v (Falcon's
  ``new_decoder_architecture``);
* ``halves``: ``[first: n | second: n]`` (Phi3 ``gate_up_proj`` = gate|up, ModernBERT ``Wi`` = input|gate).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .rules import RULES, int_attr, module_type

__all__ = ["FusedLayout", "FUSED_LAYOUTS", "Split", "Fused", "FusedPart", "find_splits", "pair_splits", "split_state", "PART_MARK",
           "real_name"]

PART_MARK = "#"  # a part of a fused tensor is named ``tensor#part``
QKV = ("q", "k", "v")


@dataclass(frozen=True)
class FusedLayout:
    """One fused projection: where (family, child or parameter name), its order, and its parts."""

    family: str | None  # config model_type; None: any family
    name: str  # child module name (its weight and bias are fused) or, with ``parameter``, a parameter name
    order: str  # blocks | per_head | per_group | halves
    parts: tuple[str, ...] = QKV
    when: str | None = None  # an attribute of the attention module that must be true for this entry
    parameter: bool = False  # nn.MultiheadAttention: ``in_proj_weight``/``in_proj_bias`` of the module itself


FUSED_LAYOUTS: tuple[FusedLayout, ...] = (
    FusedLayout("phi3", "qkv_proj", "blocks"),  # Phi3Attention.forward: qkv[..., :H*d], then K*d, K*d
    FusedLayout("phi3", "gate_up_proj", "halves", ("gate", "up")),  # Phi3MLP: gate, up = chunk(2)
    FusedLayout("gpt_neox", "query_key_value", "per_head"),  # view(..., -1, 3 * head_size).chunk(3)
    FusedLayout("bloom", "query_key_value", "per_head"),  # BloomAttention._reshape: view(.., H, 3, d)
    FusedLayout("falcon", "query_key_value", "per_group", when="new_decoder_architecture"),  # (K, H/K+2, d)
    FusedLayout("falcon", "query_key_value", "blocks", when="multi_query"),  # view(.., H + 2, d)
    FusedLayout("falcon", "query_key_value", "per_head"),  # view(.., H, 3, d)
    FusedLayout("modernbert", "Wqkv", "blocks"),  # view(..., 3, -1, head_dim)
    FusedLayout("modernbert", "Wi", "halves", ("input", "gate")),  # input, gate = Wi(x).chunk(2)
    FusedLayout("mamba", "in_proj", "halves", ("x", "gate")),  # MambaMixer: x, gate = in_proj(x).chunk(2)
    FusedLayout(None, "c_attn", "blocks"),  # GPT-2: split(embed_dim, dim=2)
    FusedLayout(None, "qkv", "blocks"),
    FusedLayout(None, "in_proj", "blocks"),
    FusedLayout(None, "in_proj_weight", "blocks", parameter=True),  # nn.MultiheadAttention (SigLIP's head)
    FusedLayout(None, "in_proj_bias", "blocks", parameter=True),
)

@dataclass(frozen=True)
class Split:
    """A fused tensor of one model cut into its parts: part name -> indices along ``axis``."""

    tensor: str
    axis: int
    order: str
    parts: tuple[tuple[str, Tensor], ...]


@dataclass(frozen=True)
class FusedPart:
    name: str
    source: Tensor  # indices of the part along the fused axis, in the source
    target: Tensor  # ... and in the target


@dataclass(frozen=True)
class Fused:
    """A fused tensor of the plan: its parts in source and target."""

    tensor: str
    axis: int
    order: str
    parts: tuple[FusedPart, ...]

    def part_name(self, part: FusedPart) -> str:
        return f"{self.tensor}{PART_MARK}{part.name}"

    def to_dict(self) -> dict:
        return {"tensor": self.tensor, "axis": self.axis, "order": self.order,
                "parts": [[p.name, p.source.numel(), p.target.numel()] for p in self.parts]}


def real_name(name: str) -> str:
    """``tensor#part`` -> ``tensor``."""
    return name.partition(PART_MARK)[0]


def _qkv_indices(order: str, width: int, heads: int | None, kv: int | None, d: int | None) -> list[Tensor] | None:
    """Indices of q, k and v along a fused axis of ``width``, or None when the numbers do not fit it."""
    if not d or width % d:
        return None
    rows = width // d  # head-sized rows
    if order == "per_head":
        heads = rows // 3
        if 3 * heads != rows:
            return None
        base = torch.arange(heads)[:, None] * 3 * d + torch.arange(d)[None, :]
        return [(base + i * d).reshape(-1) for i in range(3)]
    kv = kv if kv else heads
    heads = heads if heads else (rows - 2 * kv if kv else None)
    if not heads or not kv or heads + 2 * kv != rows or heads % kv:
        return None
    if order == "blocks":
        return [torch.arange(heads * d), heads * d + torch.arange(kv * d), (heads + kv) * d + torch.arange(kv * d)]
    group = heads // kv  # per_group: (kv, group + 2, d)
    start = torch.arange(kv)[:, None] * (group + 2) * d
    q = (start + torch.arange(group * d)[None, :]).reshape(-1)
    k = (start + group * d + torch.arange(d)[None, :]).reshape(-1)
    return [q, k, k + d]


def _layout_for(family: str | None, name: str, module: nn.Module, parameter: bool) -> FusedLayout | None:
    for layout in FUSED_LAYOUTS:
        if layout.name != name or layout.parameter != parameter or layout.family not in (None, family):
            continue
        if layout.when is not None and not getattr(module, layout.when, False):
            continue
        return layout
    return None


def _part_indices(layout: FusedLayout, width: int, attention: nn.Module, config: Any) -> list[Tensor] | None:
    if layout.order == "halves":
        return None if width % 2 else [torch.arange(width // 2), width // 2 + torch.arange(width // 2)]
    heads = int_attr(attention, RULES.heads_attrs) or int_attr(config, ("num_attention_heads",))
    kv = int_attr(attention, RULES.kv_attrs) or int_attr(config, RULES.kv_attrs)
    d = int_attr(attention, RULES.head_dim_attrs) or (int_attr(config, ("hidden_size",)) // heads if heads else None)
    return _qkv_indices(layout.order, width, heads, kv, d)


def _fused_tensors(prefix: str, module: nn.Module, family: str | None) -> list[tuple[str, int, FusedLayout]]:
    """(tensor, axis, layout) of every fused tensor that ``module`` holds directly or in its children."""
    found = []
    for name, child in module.named_children():
        kind = module_type(child)
        layout = _layout_for(family, name, module, parameter=False)
        if layout is None or kind is None or kind.output is None or getattr(child, "weight", None) is None:
            continue
        found.append((f"{prefix}.{name}.weight", kind.output, layout))
        if getattr(child, "bias", None) is not None:
            found.append((f"{prefix}.{name}.bias", 0, layout))
    for name, _ in module.named_parameters(recurse=False):
        layout = _layout_for(family, name, module, parameter=True)
        if layout is not None:
            found.append((f"{prefix}.{name}", 0, layout))
    return found


def find_splits(model: nn.Module, state: dict[str, Tensor], root_config: Any) -> dict[str, Split]:
    """Every fused tensor of ``model`` whose layout fits its shape, cut into its parts."""
    from .context import config_above

    modules = dict(model.named_modules())
    splits = {}
    for prefix, module in modules.items():
        config = config_above(modules, prefix + ".x", root_config)
        family = getattr(config, "model_type", None)
        for tensor, axis, layout in _fused_tensors(prefix, module, family):
            value = state.get(tensor)
            if value is None or value.dim() <= axis:
                continue
            width = int(value.shape[axis])
            indices = _part_indices(layout, width, module, config)
            if indices is None or sum(i.numel() for i in indices) != width:
                continue
            splits[tensor.lstrip(".")] = Split(tensor.lstrip("."), axis, layout.order, tuple(zip(layout.parts, indices)))
    return splits


def pair_splits(source: dict[str, Split], target: dict[str, Split]) -> dict[str, Fused]:
    """The fused tensors split alike in source and target."""
    out = {}
    for name, s in source.items():
        t = target.get(name)
        if t is None or t.axis != s.axis or t.order != s.order or [p for p, _ in t.parts] != [p for p, _ in s.parts]:
            continue
        out[name] = Fused(name, s.axis, s.order, tuple(FusedPart(p, i, j) for (p, i), (_, j) in zip(s.parts, t.parts)))
    return out


def split_state(fused: dict[str, Fused], state: dict[str, Tensor], rename=lambda name: name) -> dict[str, Tensor]:
    """``state`` with every fused tensor's parts added under their part names (``rename`` maps the plan's
    target names to ``state``'s)."""
    out = dict(state)
    for f in fused.values():
        value = state.get(rename(f.tensor))
        if value is None:
            continue
        for part in f.parts:
            out[rename(f.part_name(part))] = value.index_select(f.axis, part.source.to(value.device))
    return out
