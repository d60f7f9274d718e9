"""The two models a plan compares, and the axes already claimed by a dimension (first claim wins)."""

from __future__ import annotations

import re
from typing import Any, Iterator

import torch
from torch import Tensor, nn

from .experts import expert_splits
from .fused import Fused, find_splits, pair_splits
from .rules import family_rules
from .trace import trace_links
from .types import NESTED_KINDS, Axis, Dimension

__all__ = ["Context", "owner", "block_of", "config_above"]


def owner(name: str) -> tuple[str, str]:
    """``a.b.weight`` -> (``a.b``, ``weight``); a parametrized tensor (weight norm's
    ``a.b.parametrizations.weight.original1``) belongs to ``a.b`` as its ``weight``."""
    base, mark, rest = name.partition(".parametrizations.")
    if mark:
        return base, rest.split(".")[0]
    prefix, _, leaf = name.rpartition(".")
    return prefix, leaf


def block_of(name: str, lists: set[str]) -> str:
    """The innermost layer (ModuleList element) a tensor belongs to, '' when outside every layer."""
    parts = name.split(".")
    best = ""
    for i in range(1, len(parts)):
        if ".".join(parts[:i]) in lists and parts[i].isdigit():
            best = ".".join(parts[: i + 1])
    return best


def config_above(modules: dict[str, nn.Module], name: str, default: Any) -> Any:
    """The config of the deepest module above ``name`` that has one (sub-models have their own)."""
    parts = name.split(".")
    for i in range(len(parts) - 1, -1, -1):
        module = modules.get(".".join(parts[:i]))
        if module is not None and getattr(module, "config", None) is not None:
            return module.config
    return default


class Context:
    """Source and target, their tensors and modules, and the dimensions found so far."""

    def __init__(self, source: nn.Module, target: nn.Module):
        self.source, self.target = source, target
        self.src: dict[str, Tensor] = dict(source.state_dict(keep_vars=True))
        self.tgt: dict[str, Tensor] = dict(target.state_dict(keep_vars=True))
        self.src_mods = dict(source.named_modules())
        self.tgt_mods = dict(target.named_modules())
        self.lists = {n for n, m in self.tgt_mods.items() if isinstance(m, nn.ModuleList)}
        # layers that units belong to: list elements that are blocks, not the single Linear layers of an MLP
        # kept in a list (DETR-style prediction heads, D-FINE's decoder MLP), whose hidden units span them
        self.blocks = {n for n in self.lists if any(next(m.children(), None) is not None
                                                    for m in self.tgt_mods[n].children())}
        self.claimed: dict[tuple[str, int], Dimension] = {}
        self.dims: list[Dimension] = []
        self.reasons: dict[str, str] = {}  # tensor -> why a rule leaves it to be resized on its own
        self.root_config = getattr(source, "config", None)
        self.fused: dict[str, Fused] = pair_splits(find_splits(source, self.src, self.root_config),
                                                   find_splits(target, self.tgt, getattr(target, "config", None)))
        self.fused.update(expert_splits(self.src_mods, self.tgt_mods))
        self.src, self.tgt = self._split(self.src, "source"), self._split(self.tgt, "target")
        self.reads = family_rules(getattr(self.root_config, "model_type", None)).reads

    def _split(self, tensors: dict[str, Tensor], side: str) -> dict[str, Tensor]:
        """The rules see each part of a fused tensor as a tensor of its own (shapes only), in its place."""
        out = {}
        for name, whole in tensors.items():
            fused = self.fused.get(name)
            if fused is None:
                out[name] = whole
                continue
            for part in fused.parts:
                shape = list(whole.shape)
                shape[fused.axis] = getattr(part, side).numel()
                out[fused.part_name(part)] = torch.empty(shape, dtype=whole.dtype, device="meta")
        return out

    def links(self) -> dict | None:
        """Axes the source's computation links (``trace.trace_links``), traced once when first asked."""
        if not hasattr(self, "_links"):
            self._links = trace_links(self.source)
        return self._links

    def changed(self) -> Iterator[tuple[str, int, int, int]]:
        """(tensor, axis, source size, target size) of every axis whose size changes."""
        for name, t in self.tgt.items():
            s = self.src.get(name)
            if s is None or s.dim() != t.dim() or s.shape == t.shape:
                continue
            for axis, (a, b) in enumerate(zip(s.shape, t.shape)):
                if a != b:
                    yield name, axis, int(a), int(b)

    def unclaimed(self) -> Iterator[tuple[str, int, int, int]]:
        return ((n, a, s, t) for n, a, s, t in list(self.changed()) if (n, a) not in self.claimed)

    def add(self, dim: Dimension) -> Dimension:
        """Register ``dim`` with those of its axes no other dimension explains yet, except that a head's
        width and the head count may share an axis (heads x width, see ``NESTED_KINDS``)."""
        dim.axes = [a for a in dim.axes if (a.tensor, a.axis) not in self.claimed
                    or (self.claimed[(a.tensor, a.axis)].kind, dim.kind) in NESTED_KINDS]
        for a in dim.axes:
            self.claimed.setdefault((a.tensor, a.axis), dim)
        if dim.name in {d.name for d in self.dims}:  # e.g. the residual of each Swin stage: name by source size
            dim.name = f"{dim.name}.{dim.source}"
        self.dims.append(dim)  # dimensions left without axes are dropped at the end
        return dim

    def claim(self, dim: Dimension, axis: Axis) -> None:
        if (axis.tensor, axis.axis) not in self.claimed:
            dim.axes.append(axis)
            self.claimed[(axis.tensor, axis.axis)] = dim

    def shape_changes(self, name: str, axis: int) -> tuple[int, int] | None:
        s, t = self.src.get(name), self.tgt.get(name)
        if s is None or t is None or s.dim() != t.dim() or s.shape[axis] == t.shape[axis]:
            return None
        return int(s.shape[axis]), int(t.shape[axis])

    def config_of(self, name: str) -> Any:
        return config_above(self.src_mods, name, self.root_config)

    def target_config_of(self, name: str) -> Any:
        return config_above(self.tgt_mods, name, getattr(self.target, "config", None))

    def scope(self, name: str) -> str:
        """The sub-model a tensor belongs to (CLIP's text_model/vision_model, a backbone): residuals of
        sub-models with their own kind of config are different dimensions even when their sizes agree
        (T5's encoder and decoder copy the root config and share its residual)."""
        for pattern, axis, scope in self.reads:
            if re.search(pattern, name):
                return scope
        parts = name.split(".")
        for i in range(1, len(parts)):
            module = self.src_mods.get(".".join(parts[:i]))
            config = getattr(module, "config", None)
            if config is not None and self.root_config is not None and type(config) is not type(self.root_config):
                return ".".join(parts[:i])
        return ""
