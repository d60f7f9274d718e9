"""Shrink methods that keep what the big model learned: choose units by importance, then compensate.

One function, ``fill``, runs the whole recipe on a freshly built target:

1. depth: which source layers a shallower stack keeps (``first``, ``uniform`` or ``importance``);
2. optionally, rotate each attention head's width to its principal directions (``rotate``), a change
   of basis that leaves the source's function exactly as it was;
3. one choice of kept units per dimension of the plan: ``magnitude`` (weight norms) or ``calibrated``
   (activations), the aligned channels wherever a parameter-free encoding fixes them;
4. the transfer of every tensor with those choices;
5. optionally, compensation: a closed-form refit of every resized layer, in forward order on the small
   model's own activations, to the source's outputs; query/key projections also absorb the attention
   temperature that a narrower head changes.

Everything the recipe chose is returned in a ``Preservation`` record that ``interprune.json`` keeps.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from .compensate import compensate
from .errors import InterpruneError
from .importance import (DEPTH_CHOICES, activation_scores, axis_indices, choose, choose_layers, layer_influence,
                         layer_lists, layer_name_map, magnitude_scores, select_layers)
from .rotate import rotate_heads

__all__ = ["PRESERVING", "Preservation", "fill", "check_options"]

PRESERVING = {
    "magnitude": "keep the units with the largest weight norms, one choice per dimension (no data)",
    "calibrated": "keep the units with the most activation on --calibration data, one choice per dimension",
}
RIDGE = 1e-2  # relative ridge of the least-squares refit; benchmarks/retention.py measured 1e-4..1e-1


@dataclass
class Preservation:
    """What a preserving method chose, so a result can be inspected and reproduced."""

    method: str
    choices: dict[str, list[int]] = field(default_factory=dict)  # dimension -> kept source units
    layers: dict[str, list[int]] = field(default_factory=dict)  # layer stack -> kept source layers
    layer_choice: str = "first"
    rotated: list[str] = field(default_factory=list)  # dimensions rotated to principal directions
    compensated: list[str] = field(default_factory=list)  # layers refit, in forward order
    calibration_examples: int = 0

    def to_dict(self) -> dict:
        return {"method": self.method, "choices": self.choices, "layers": self.layers,
                "layer_choice": self.layer_choice, "rotated": self.rotated, "compensated": self.compensated,
                "calibration_examples": self.calibration_examples}


def check_options(method: str, *, calibration: bool, compensate: bool, layers: str, rotate: bool) -> None:
    """Reject inconsistent options before any work, naming the fix."""
    if layers not in DEPTH_CHOICES:
        raise InterpruneError(f"unknown layer choice {layers!r}; use one of {', '.join(DEPTH_CHOICES)}")
    needs = [flag for flag, on in (("--compensate", compensate), ("--rotate", rotate),
                                   ("--layers importance", layers == "importance"),
                                   ("--method calibrated", method == "calibrated")) if on]
    if needs and not calibration:
        raise InterpruneError(f"{', '.join(needs)} needs calibration inputs; pass --calibration DATA (a dataset "
                              f"or image folder, or a text file with one example per line)")


def _batch_size(inputs: dict[str, Any]) -> int:
    first = next((v for v in inputs.values() if isinstance(v, Tensor)), None)
    return int(first.shape[0]) if first is not None else 0


def _qk_dimensions(plan: Any) -> list[Any]:
    """Head-width dimensions nothing reads linearly: queries and keys, which meet in a dot product."""
    return [d for d in plan.dimensions if d.kind == "head_dim" and d.target < d.source
            and not any(a.axis == 1 for a in d.axes)]


@torch.no_grad()
def fill(
    source: nn.Module,
    target: nn.Module,
    method: str,
    *,
    inputs: dict[str, Any] | None = None,
    compensate_layers: bool = False,
    layers: str = "first",
    rotate: bool = False,
    seed: int = 0,
) -> tuple[Any, Preservation]:
    """Fill ``target`` in place from ``source`` with a preserving ``method``; return the transfer report
    and what was chosen. ``inputs`` is one batch of calibration inputs (``calibration.calibration_inputs``)."""
    from .plan import make_plan
    from .transfer import transfer

    if method not in PRESERVING:
        raise InterpruneError(f"unknown method {method!r}; preserving methods: {', '.join(PRESERVING)}")
    check_options(method, calibration=inputs is not None, compensate=compensate_layers, layers=layers, rotate=rotate)
    record = Preservation(method, layer_choice=layers, calibration_examples=_batch_size(inputs or {}))
    kept_layers = {}
    for prefix, (n_source, n_target) in layer_lists(source, target).items():
        if n_target >= n_source:
            continue
        influence = layer_influence(source, prefix, inputs) if layers == "importance" else None
        kept_layers[prefix] = choose_layers(layers, n_source, n_target, influence)
        record.layers[prefix] = kept_layers[prefix].tolist()
    rename = layer_name_map(kept_layers)  # target name -> source name
    plan = make_plan(select_layers(source, kept_layers) if kept_layers else source, target)
    full, rotated_choices = source, {}
    if rotate:  # the whole source is rotated (same function), so its own forward still gives the targets
        full, rotated_choices = rotate_heads(source, plan, inputs, rename)
        record.rotated = sorted(rotated_choices)
    view = select_layers(full, kept_layers) if kept_layers else full
    if method == "calibrated":
        scores = activation_scores(full, plan, inputs, rename)
    else:
        scores = magnitude_scores(view.state_dict(), plan)
    choices = {**choose(plan, scores), **rotated_choices}
    record.choices = {name: index.tolist() for name, index in choices.items()}
    report = transfer(view, target, "select", plan=plan, choices=choices, seed=seed)
    if compensate_layers:
        assert inputs is not None
        done = compensate(full, target, inputs, _kept(plan, choices), source_name=rename,
                          scale=_temperature(plan, choices), ridge=RIDGE)
        record.compensated = done.layers
    return report, record


def _kept(plan: Any, choices: dict[str, Tensor]):
    """Target layer name -> source output indices it keeps (the choice of its weight's output axis)."""
    by_tensor = {(a.tensor, a.axis): (a, d) for d in plan.dimensions for a in d.axes}

    def kept(name: str) -> Tensor | None:
        found = by_tensor.get((f"{name}.weight", 0))
        if found is None or found[1].name not in choices:
            return None
        axis, dim = found
        return axis_indices(axis, dim.source, choices[dim.name])

    return kept


def _temperature(plan: Any, choices: dict[str, Tensor]):
    """Scale of each query/key projection's refit targets when its head width is cut: attention divides
    the logits by ``sqrt(width)``, so a narrower head sharpens them by ``sqrt(source/target)`` while the
    kept channels carry only part of the dot product. Scaling queries and keys each by
    ``(source/target)^(1/4)`` (measured best among 0, 1/4 and 1/2 powers, see the benchmark) keeps the
    logits near the source's."""
    factors = {}
    for dim in _qk_dimensions(plan):
        if dim.name in choices:
            for axis in dim.axes:
                factors[axis.tensor.rpartition(".")[0]] = (dim.source / dim.target) ** 0.25
    return lambda name: factors.get(name, 1.0)
