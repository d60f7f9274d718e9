"""Carry every tensor of a source model into a target model: the model walk, no I/O.

The walk uses the *state dict*, not ``parameters()``: buffers such as DETR's frozen batch-norm
statistics are part of what a model learned. Copying parameters only (as the paper did) silently
keeps the target's default statistics, which is why its same-size "weight transfer" differed from
the pretrained model. Here a same-size transfer reproduces the source exactly.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Mapping

import torch
from torch import nn

from torch import Tensor

from ..hf.models import count_parameters
from ..methods import Kind, names
from ..plan import Grid, Plan, axis_index, default_choices, make_plan
from .resample import RESAMPLERS, resample

__all__ = ["TensorRecord", "TransferReport", "transfer", "count_parameters"]

COPIED, RESAMPLED, INITIALISED = "copied", "resampled", "initialised"


@dataclass
class TensorRecord:
    """What happened to one target tensor."""

    name: str
    source_shape: list[int] | None  # None: the source has no tensor of that name
    target_shape: list[int]
    action: str  # copied | resampled | initialised
    kind: str  # parameter | buffer


@dataclass
class TransferReport:
    """Per-tensor account of a transfer, the evidence behind 'what did the small model inherit'."""

    method: str
    source_parameters: int
    target_parameters: int
    seed: int = 0
    source: str | None = None  # filled in by ``shrink``: where the weights came from
    overrides: dict = field(default_factory=dict)
    tensors: list[TensorRecord] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)  # source tensors the target has no place for
    plan: dict = field(default_factory=dict)  # the dimension plan (``Plan.to_dict``)
    choices: dict[str, list[int]] = field(default_factory=dict)  # dimension -> source indices kept (-1: new)
    preserved: dict = field(default_factory=dict)  # importance methods: layers kept, rotation, compensation

    def counts(self) -> dict[str, int]:
        found = Counter(t.action for t in self.tensors)
        return {a: found.get(a, 0) for a in (COPIED, RESAMPLED, INITIALISED)}

    def to_dict(self) -> dict:
        return {**asdict(self), "counts": self.counts()}

    def summary(self) -> str:
        before, after = self.source_parameters, self.target_parameters
        change = (1 - after / before) * 100 if before else 0.0
        word = "smaller" if change >= 0 else "larger"
        c = self.counts()
        return (
            f"parameters {before:,} -> {after:,} ({abs(change):.1f}% {word}); tensors: "
            f"{c[COPIED]} copied, {c[RESAMPLED]} resampled ({self.method}), {c[INITIALISED]} initialised"
        )


@torch.no_grad()
def transfer(
    source: nn.Module,
    target: nn.Module,
    method: str,
    *,
    seed: int = 0,
    reinit: str | None = None,
    plan: Plan | None = None,
    choices: dict[str, Tensor] | None = None,
    state: Mapping[str, Tensor] | None = None,
    put: Callable[[str, Tensor, Tensor | None], None] | None = None,
) -> TransferReport:
    """Fill ``target`` in place from ``source`` and report what happened to every tensor.

    Same-shape tensors are copied exactly. A resized tensor is filled through the dimension ``plan``
    (derived from the two models when not given): structure-aware methods (``select``, ``first``, or any
    method given ``choices``, a dimension name -> the source indices kept) take one choice per dimension
    and apply it to every axis of it; the paper's interpolations resample each tensor on its own, except
    that ids keep their meaning for every method (vocabularies and learned 1-D positions are truncated or
    extended, 2-D position grids are resized as grids with their extra tokens kept). Tensors without a
    same-rank counterpart, those whose name matches the ``reinit`` regex, and integer buffers the target
    computes from its config keep the target's own initial values (the target must be freshly initialised).
    ``state`` replaces ``source.state_dict()`` (a checkpoint read lazily, one tensor at a time) and
    ``put(name, slot, value)`` receives each target tensor instead of copying it into the slot (``None``:
    the target keeps its own value), so a target on the meta device can be written out as it is filled.
    """
    if method not in RESAMPLERS:
        raise ValueError(f"unknown method {method!r}; choose one of: {', '.join(RESAMPLERS)}")
    pattern = re.compile(reinit) if reinit else None
    generator = torch.Generator().manual_seed(seed)
    plan = plan if plan is not None else make_plan(source, target)
    structured = method in names(Kind.STRUCTURED) or choices is not None
    picked = default_choices(plan, method if method in names(Kind.STRUCTURED) else "select")
    picked.update(_checked_choices(plan, choices or {}))
    state = source.state_dict() if state is None else state
    names_ = _renamed(state, plan, picked)  # target name -> source name
    params = {name for name, _ in target.named_parameters(remove_duplicate=False)}
    report = TransferReport(method, count_parameters(source), count_parameters(target), seed)
    report.plan = plan.to_dict()
    report.choices = {k: v.tolist() for k, v in picked.items()}
    computed = set(plan.computed)
    tgt = target.state_dict(keep_vars=True)
    put = put or (lambda name, slot, value: None if value is None else slot.data.copy_(value))
    tied: dict[int, str] = {}  # a tensor's id -> the action of its first name (tied weights are one tensor)
    for name, slot in tgt.items():
        value = state.get(names_[name]) if name in names_ else None
        keep_own = value is None or value.dim() != slot.dim() or bool(pattern and pattern.search(name)) \
            or name in computed
        action = _put_one(name, slot, value, keep_own, put,
                          lambda: _fill(name, value, slot.data, method, plan, picked, structured, generator),
                          RESAMPLERS[method] is None, tied.get(id(slot)))
        tied.setdefault(id(slot), action)
        source_shape = list(value.shape) if value is not None else None
        kind = "parameter" if name in params else "buffer"
        report.tensors.append(TensorRecord(name, source_shape, list(slot.shape), action, kind))
        del value
    report.dropped = _dropped(state, {names_[name] for name in tgt if name in names_})
    return report


def _put_one(name: str, slot: Tensor, value: Tensor | None, keep_own: bool, put: Callable,
             resampled: Callable[[], Tensor], own_values: bool, tied_to: str | None = None) -> str:
    """Give one target tensor its value: its own (no counterpart, ``reinit``, computed, or ``random``'s
    ``own_values``), the source's as it is (same shape), or the source's resampled; returns the action.
    ``tied_to``: the action of an earlier name of the same tensor. A tied output layer a checkpoint does not
    store holds what that name was given, not initial values."""
    if value is None and tied_to is not None:
        put(name, slot, None)
        return tied_to
    if keep_own or (value is not None and value.shape != slot.shape and own_values):
        put(name, slot, None)
        return INITIALISED
    if value.shape == slot.shape:
        put(name, slot, value)
        return COPIED
    put(name, slot, resampled())
    return RESAMPLED


def _dropped(state: Mapping[str, Tensor], used: set[str]) -> list[str]:
    """Source tensors the target has no room for. Tied tensors: a name whose tensor another used name holds
    is used too (only an in-memory state dict can tell)."""
    if isinstance(state, dict):
        ids = {id(state[name]) for name in used}
        used = used | {name for name, value in state.items() if id(value) in ids}
    return [name for name in state if name not in used]


def _checked_choices(plan: Plan, choices: dict[str, Tensor]) -> dict[str, Tensor]:
    """A caller's choices (dimension name -> source indices kept, -1 for the target's own value), checked."""
    unknown = sorted(set(choices) - {d.name for d in plan.dimensions})
    if unknown:
        raise ValueError(f"choices for unknown dimensions {unknown}; the plan has {[d.name for d in plan.dimensions]}")
    out = {}
    for name, value in choices.items():
        dim, value = plan[name], torch.as_tensor(value, dtype=torch.long)
        if value.shape != (dim.target,) or value.min() < -1 or value.max() >= dim.source:
            raise ValueError(f"choices[{name!r}] must hold {dim.target} source indices in 0..{dim.source - 1} "
                             f"(-1: the target's own value); got {value.tolist()}")
        out[name] = value
    return out


def _renamed(state: Any, plan: Plan, choices: dict[str, Tensor]) -> dict[str, str]:
    """Target tensor name -> the source name it reads: with fewer (or chosen) layers, target layer i
    reads source layer ``choices[layers][i]``. Names only, so a lazily read checkpoint stays unread."""
    out = {name: name for name in state}
    for dim in plan.dimensions:
        if dim.kind != "layers":
            continue
        chosen = choices[dim.name].tolist()
        prefix = dim.name + "."
        kept = {k: v for k, v in out.items() if not k.startswith(prefix)}
        for i, j in enumerate(chosen):
            if j < 0:
                continue
            head = f"{prefix}{j}."
            kept.update({f"{prefix}{i}.{k[len(head):]}": v for k, v in out.items() if k.startswith(head)})
        out = kept
    return out


def _fill(name: str, value: Tensor, fresh: Tensor, method: str, plan: Plan, choices: dict[str, Tensor],
          structured: bool, generator: torch.Generator) -> Tensor:
    """One resized tensor: planned axes by their dimension's choice, the others resampled with ``method``."""
    if fresh.numel() == 0:
        return fresh.clone()
    fused = plan.fused.get(name)
    if fused is not None and structured:  # fused q|k|v or gate|up: fill each part as planned, then join
        covered = sum(part.target.numel() for part in fused.parts) == fresh.shape[fused.axis]
        # parts that cover every row need nothing of the target's own values (so a meta target streams)
        out = torch.empty(fresh.shape, dtype=fresh.dtype, device=value.device) if covered else fresh.clone()
        for part in fused.parts:  # indices live on the CPU, each tensor where its model is (or on meta)
            piece = _fill(fused.part_name(part), value.index_select(fused.axis, part.source.to(value.device)),
                          fresh.index_select(fused.axis, part.target.to(fresh.device)), method, plan, choices,
                          structured, generator)
            out.index_copy_(fused.axis, part.target.to(out.device), piece.to(out.dtype))
        return out
    by_axis: dict[int, list] = {}
    for axis, dim, ax in plan.entries(name):
        by_axis.setdefault(axis, []).append((dim, ax))
    work, mask = value.detach(), None
    if work.dtype != fresh.dtype and work.is_floating_point() and fresh.is_floating_point() and fresh.device.type != "meta":
        work = work.to(fresh.dtype)  # a half-precision source into a float32 target: resampled in float32
    for axis, entries in sorted(by_axis.items()):
        if work.shape[axis] == fresh.shape[axis]:
            continue
        ids = all(d.kind in ("vocab", "positions") or (d.kind == "grid" and d.grid.relative) for d, _ in entries)
        grid = [d for d, _ in entries if d.kind == "grid" and not d.grid.relative]
        if not structured and grid and len(entries) == 1:
            work = _resample_grid(work, axis, grid[0].grid, method)
            continue
        if not (structured or ids):
            continue
        index = axis_index(work.shape[axis], entries, choices)
        if index is None or index.numel() != fresh.shape[axis]:
            continue
        index = index.to(work.device)  # choices live on the CPU, the tensors where the model is
        work = work.index_select(axis, index.clamp(min=0))
        missing = index < 0
        if bool(missing.any()):  # asked of the index, not of a mask the size of the tensor
            missing = missing.reshape([-1 if i == axis else 1 for i in range(work.dim())])
            mask = missing if mask is None else mask | missing
    if tuple(work.shape) != tuple(fresh.shape):
        work = resample(work, fresh.shape, method, fill=fresh if mask is None else None, generator=generator)
    if mask is not None:  # grown units keep the target's own values
        work = torch.where(mask.expand_as(work), fresh.to(work.dtype), work)
    return work


def _resample_grid(value: Tensor, axis: int, grid: Grid, method: str) -> Tensor:
    """Resize a position grid as a 2-D image with ``method``, keeping its extra tokens (CLS, detection)."""
    (hs, ws), (ht, wt) = grid.source, grid.target
    before, after = grid.before, grid.after
    moved = value.movedim(axis, -1)
    head, cells, tail = moved[..., :before], moved[..., before:before + hs * ws], moved[..., before + hs * ws:]
    cells = cells.reshape(*cells.shape[:-1], hs, ws)
    cells = resample(cells, (*cells.shape[:-2], ht, wt), method)
    cells = cells.reshape(*cells.shape[:-2], ht * wt)
    return torch.cat([head, cells, tail[..., :after]], dim=-1).movedim(-1, axis)
