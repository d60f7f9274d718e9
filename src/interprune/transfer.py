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

import torch
from torch import nn

from .resample import METHODS, resample

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


def count_parameters(model: nn.Module) -> int:
    """Unique parameters (tied weights once), the number people quote for a model's size."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


@torch.no_grad()
def transfer(
    source: nn.Module,
    target: nn.Module,
    method: str,
    *,
    seed: int = 0,
    reinit: str | None = None,
) -> TransferReport:
    """Fill ``target`` in place from ``source`` and report what happened to every tensor.

    Same-shape tensors are copied exactly; tensors whose shape changed are resampled with ``method``;
    tensors without a same-rank counterpart, and those whose name matches the ``reinit`` regex, keep
    the target's own initial values (the target must therefore be freshly initialised).
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of: {', '.join(METHODS)}")
    pattern = re.compile(reinit) if reinit else None
    generator = torch.Generator().manual_seed(seed)
    src = source.state_dict()
    params = {name for name, _ in target.named_parameters(remove_duplicate=False)}
    report = TransferReport(method, count_parameters(source), count_parameters(target), seed)
    tgt = target.state_dict(keep_vars=True)
    for name, slot in tgt.items():
        value = src.get(name)
        kind = "parameter" if name in params else "buffer"
        shape = list(slot.shape)
        if value is None or value.dim() != slot.dim() or (pattern and pattern.search(name)):
            action = INITIALISED
        elif value.shape == slot.shape:
            slot.data.copy_(value)
            action = COPIED
        elif METHODS[method].axis_fn is None:  # ``random``: the target's own initial values
            action = INITIALISED
        else:
            slot.data.copy_(resample(value, slot.shape, method, fill=slot.data, generator=generator))
            action = RESAMPLED
        source_shape = list(value.shape) if value is not None else None
        report.tensors.append(TensorRecord(name, source_shape, shape, action, kind))
    report.dropped = [name for name in src if name not in tgt]
    return report
