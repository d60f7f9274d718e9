"""The plan's data: what a dimension is, which tensor axes it covers, and the plan that lists them.

Everything here is plain typed data (no torch modules, no rules): the derivation (``derive``) fills it,
the choices (``choices``) and every method read it, and ``interprune.json`` stores ``Plan.to_dict``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING

from torch import Tensor

if TYPE_CHECKING:
    from .fused import Fused

__all__ = ["Kind", "Axis", "Grid", "KeyValueHeads", "Dimension", "Plan", "plan_summary"]


class Kind(StrEnum):
    """What a dimension's units are. A ``StrEnum``: its value is the word ``interprune.json`` stores."""

    RESIDUAL = "residual"  # the stream every layer reads and writes (one per sub-model)
    FFN = "ffn"  # one layer's hidden units between two linear maps
    HEADS = "heads"  # one attention module's (query) heads
    HEAD_DIM = "head_dim"  # the width inside every head of one attention module
    KV_HEADS = "kv_heads"  # key/value heads of grouped-query attention
    POSITIONS = "positions"  # learned 1-D positions: ids, truncated or extended
    GRID = "grid"  # a 2-D position grid or relative-position table
    VOCAB = "vocab"  # token ids
    QUERIES = "queries"  # object queries (DETR family)
    CHANNELS = "channels"  # conv channels (global per stage, or one layer's)
    LAYERS = "layers"  # the number of layers of a stack
    EXPERTS = "experts"  # the number of experts of a mixture-of-experts layer (router rows, whole experts)


# Kinds whose units are ids: a unit keeps its meaning, so every method truncates or extends them.
ID_KINDS = frozenset({Kind.VOCAB, Kind.POSITIONS, Kind.LAYERS})
# A head's width nests inside the head count on one axis (heads x width), so both may claim it.
NESTED_KINDS = frozenset({(Kind.HEAD_DIM, Kind.HEADS), (Kind.HEAD_DIM, Kind.KV_HEADS),
                          (Kind.HEADS, Kind.HEAD_DIM), (Kind.KV_HEADS, Kind.HEAD_DIM)})


@dataclass
class Axis:
    """One tensor axis that belongs to a dimension."""

    tensor: str
    axis: int
    parts: int = 1  # the axis is `parts` equal blocks, each resized alike with the same choice
    group: int = 1  # units come in groups (heads: group = head_dim); a choice keeps whole groups


@dataclass(frozen=True)
class Grid:
    """A 2-D position grid stored flat: ``before`` extra tokens (CLS, distillation), rows x cols cells,
    ``after`` extra tokens (YOLOS's detection tokens). ``relative``: a relative-position table, whose
    cells are offsets -(n-1)..(n-1) rather than positions."""

    source: tuple[int, int]
    target: tuple[int, int]
    before: int = 0
    after: int = 0
    relative: bool = False

    def to_dict(self) -> dict:
        return {"source": list(self.source), "target": list(self.target), "before": self.before,
                "after": self.after, "relative": self.relative}


@dataclass(frozen=True)
class KeyValueHeads:
    """Grouped-query attention: the query heads are grouped under this many key/value heads."""

    source: int
    target: int


@dataclass
class Dimension:
    name: str
    kind: Kind
    source: int
    target: int
    axes: list[Axis] = field(default_factory=list)
    aligned: Tensor | None = None  # source indices forced by a parameter-free encoding
    grid: Grid | None = None  # kind GRID only
    kv: KeyValueHeads | None = None  # kind HEADS with grouped-query attention only

    def to_dict(self) -> dict:
        out = {"name": self.name, "kind": self.kind.value, "source": self.source, "target": self.target,
               "axes": [[a.tensor, a.axis, a.parts, a.group] for a in self.axes]}
        if self.aligned is not None:
            out["aligned"] = self.aligned.tolist()
        if self.grid is not None:
            out["grid"] = self.grid.to_dict()
        if self.kv is not None:
            out["kv"] = [self.kv.source, self.kv.target]
        return out


@dataclass
class Plan:
    dimensions: list[Dimension]
    unplanned: list[str]  # resized tensors no dimension explains: resized per tensor as before
    computed: list[str] = field(default_factory=list)  # integer buffers the target computes from its config
    fused: dict[str, Fused] = field(default_factory=dict)  # fused tensors, planned as their parts (``t#q``)
    reasons: dict[str, str] = field(default_factory=dict)  # unplanned tensor -> why no rule plans it

    def __post_init__(self) -> None:
        self._index: dict[str, list[tuple[int, Dimension, Axis]]] = {}
        for dim in self.dimensions:
            for ax in dim.axes:
                self._index.setdefault(ax.tensor, []).append((ax.axis, dim, ax))

    def entries(self, name: str) -> list[tuple[int, Dimension, Axis]]:
        return self._index.get(name, [])

    def __getitem__(self, name: str) -> Dimension:
        return next(d for d in self.dimensions if d.name == name)

    def to_dict(self) -> dict:
        out = {"dimensions": [d.to_dict() for d in self.dimensions], "unplanned": self.unplanned,
               "computed": self.computed}
        if self.fused:
            out["fused"] = [f.to_dict() for f in self.fused.values()]
        if self.reasons:
            out["reasons"] = dict(self.reasons)
        return out

    def describe(self) -> str:
        """One line per changed dimension and the tensor axes it covers (``interprune plan``)."""
        lines = []
        for d in self.dimensions:
            encoding = "rotary" if d.kind == Kind.HEAD_DIM else "sine"
            extra = f" (aligned with the {encoding} position encoding)" if d.aligned is not None else ""
            if d.grid:
                g = d.grid
                extra += f" grid {g.source[0]}x{g.source[1]} -> {g.target[0]}x{g.target[1]}"
                extra += f", {g.before}+{g.after} extra tokens kept" if g.before + g.after else ""
            lines.append(f"{d.kind:<9} {d.name}: {d.source} -> {d.target}{extra}")
            for a in d.axes:
                split = (f" parts={a.parts}" if a.parts > 1 else "") + (f" group={a.group}" if a.group > 1 else "")
                lines.append(f"    {a.tensor}[{a.axis}]{split}")
        for f in self.fused.values():
            sizes = ", ".join(f"{p.name} {p.source.numel()}->{p.target.numel()}" for p in f.parts)
            lines.append(f"fused     {f.tensor}[{f.axis}] ({f.order}): {sizes}")
        for name in self.unplanned:
            why = self.reasons.get(name, "no dimension explains its change")
            lines.append(f"unplanned {name}: {why}; resized on its own, per tensor")
        return "\n".join(lines) if lines else "no dimension changes"


def plan_summary(plan: dict) -> str:
    """One line for the shrink's output: how many dimensions of each kind changed, what was left per tensor."""
    kinds: dict[str, int] = {}
    for dim in plan.get("dimensions", []):
        kinds[dim["kind"]] = kinds.get(dim["kind"], 0) + 1
    parts = ", ".join(f"{n} {k}" for k, n in kinds.items()) or "no dimension changed"
    return f"plan: {parts}; {len(plan.get('unplanned', []))} tensors resized on their own ('interprune plan' lists them)"
