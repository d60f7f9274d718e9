"""The plan's own choices (``select``, ``first``) and how a choice becomes source indices of one axis."""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from .rules import STRUCTURED
from .types import ID_KINDS, Axis, Dimension, Grid, Kind, Plan

__all__ = ["default_choices", "grouped_heads", "grid_choice", "axis_index", "first_units", "output_index"]

Pick = Callable[[int, int], Tensor]


def first_units(n: int, m: int) -> Tensor:
    """The first ``m`` of ``n`` units; -1 (the target's own value) past the source's end."""
    idx = torch.arange(m)
    idx[idx >= n] = -1
    return idx


def default_choices(plan: Plan, method: str) -> dict[str, Tensor]:
    """The source indices each dimension keeps under a structure-aware method (-1: the target's own value).

    ``select`` keeps evenly spaced units, ``first`` the leading ones; both keep the indices a parameter-free
    encoding forces (``aligned``). Whatever the method, ids keep their meaning: vocabularies and learned
    1-D positions are truncated or extended, relative-position tables keep their central offsets, and
    fewer layers keep the first ones. Grouped-query heads follow their key/value heads.
    """
    from ..weights.resample import select_indices

    pick = select_indices if method == "select" else first_units
    out: dict[str, Tensor] = {}
    for dim in plan.dimensions:
        n, m = dim.source, dim.target
        if dim.kind in ID_KINDS:
            out[dim.name] = first_units(n, m)
        elif dim.kind == Kind.GRID:
            out[dim.name] = grid_choice(dim.grid, pick)
        elif dim.aligned is not None and method in STRUCTURED:
            out[dim.name] = dim.aligned.clone()
        else:
            out[dim.name] = pick(n, m).long()
    for dim in plan.dimensions:  # grouped-query attention: query heads stay with the key/value heads kept
        if dim.kind == Kind.HEADS and dim.kv is not None:
            kv_name = dim.name.replace(".heads", ".kv_heads")
            kept = out[kv_name] if kv_name in out else torch.arange(dim.kv.source)
            out[dim.name] = grouped_heads(kept, dim.source // dim.kv.source, dim.target // dim.kv.target, pick)
    return out


def grouped_heads(kv_choice: Tensor, group_s: int, group_t: int, pick: Pick) -> Tensor:
    """Query heads kept with grouped-query attention: for each kept key/value head, its own query heads."""
    inner = pick(group_s, group_t).long()
    return torch.cat([torch.where(inner >= 0, k * group_s + inner, -1) if k >= 0 else torch.full_like(inner, -1)
                      for k in kv_choice.tolist()])


def grid_choice(grid: Grid, pick: Pick) -> Tensor:
    """Flat source indices of a grid's kept cells, its extra tokens kept around them."""
    (hs, ws), (ht, wt) = grid.source, grid.target
    if grid.relative:  # offsets -(w-1)..(w-1): keep the central ones, so every offset keeps its meaning
        rows = torch.arange(ht) + (hs - ht) // 2
        cols = torch.arange(wt) + (ws - wt) // 2
        rows[(rows < 0) | (rows >= hs)] = -1
        cols[(cols < 0) | (cols >= ws)] = -1
    else:
        rows, cols = pick(hs, ht).long(), pick(ws, wt).long()
    cells = torch.where((rows[:, None] >= 0) & (cols[None, :] >= 0), rows[:, None] * ws + cols[None, :], -1)
    cells = torch.where(cells >= 0, cells + grid.before, -1).reshape(-1)
    return torch.cat([torch.arange(grid.before), cells, torch.arange(grid.after) + grid.before + hs * ws])


def axis_index(size: int, entries: list[tuple[Dimension, Axis]], choices: dict[str, Tensor]) -> Tensor | None:
    """Source indices for one axis of ``size`` elements (-1: keep the target's value), or None when the
    dimensions on this axis do not tile it (the caller then resizes the tensor on its own).

    Inner dimensions (a head's width, repeated in every head and part) apply first; grouped ones (whole
    heads) then keep whole groups of whatever width is left.
    """
    idx = torch.arange(size)
    for dim, ax in sorted(entries, key=lambda e: e[1].group > 1):
        choice = choices.get(dim.name)
        if choice is None:
            return None
        units = dim.source
        group = idx.numel() // (ax.parts * units) if ax.group > 1 else ax.group
        if ax.parts * units * group != idx.numel():
            return None
        view = idx.reshape(ax.parts, units, group)
        kept = view[:, choice.clamp(min=0), :].clone()
        kept[:, choice < 0, :] = -1
        idx = kept.reshape(-1)
    return idx


def output_index(plan: Plan, tensor: str, size: int, choices: dict[str, Tensor]) -> Tensor | None:
    """Source indices kept along axis 0 of ``tensor`` (a layer's outputs), or None when it keeps them all;
    a fused tensor joins its parts' indices in the target's layout."""
    fused = plan.fused.get(tensor)
    if fused is None or fused.axis != 0:
        entries = [(dim, ax) for axis, dim, ax in plan.entries(tensor) if axis == 0 and dim.kind != Kind.LAYERS]
        return axis_index(size, entries, choices) if entries else None
    total = sum(p.target.numel() for p in fused.parts)
    out = torch.full((total,), -1, dtype=torch.long)
    for part in fused.parts:
        inner = output_index(plan, fused.part_name(part), part.source.numel(), choices)
        inner = torch.arange(part.source.numel()) if inner is None else inner
        if inner.numel() != part.target.numel():
            return None
        out[part.target] = torch.where(inner >= 0, part.source[inner.clamp(min=0)], -1)
    return out
