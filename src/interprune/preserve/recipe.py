"""Shrink methods that keep what the big model learned: choose units by importance, then compensate.

One function, ``fill``, runs the whole recipe on a freshly built target (``magnitude`` and
``calibrated`` choose units; ``select`` and ``first`` keep the plan's own choice and can still take
the depth, rotation and compensation options):

1. depth: which source layers a shallower stack keeps (``first``, ``uniform`` or ``importance``);
2. optionally, rotate each attention head's width (``rotate="heads"``, or ``True``) and/or a pre-norm
   model's residual stream (``"residual"``, ``"both"``) to its principal directions, a change of basis that
   leaves the source's function exactly as it was (``rotate.py``, ``residual.py``);
3. one choice of kept units per dimension of the plan: ``magnitude`` (weight norms) or ``calibrated``
   (activations), the aligned channels wherever a parameter-free encoding fixes them;
4. the transfer of every tensor with those choices;
5. optionally, compensation: a closed-form refit of every resized layer, in forward order on the small
   model's own activations, to the source's outputs; query/key projections also absorb the attention
   temperature that a narrower head changes.

Everything the recipe chose is returned in a ``Preservation`` record that ``interprune.json`` keeps.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import torch
from torch import Tensor, nn

from ..methods import Kind, check_recipe, names, rotation_parts
from ..plan import RULES, Plan, make_plan, output_index
from ..weights.transfer import count_parameters, transfer
from .compensate import compensate
from .importance import (activation_scores, choose, choose_layers, layer_influence, layer_name_map,
                         magnitude_scores)
from .residual import rotate_residual
from .rotate import query_key_axes, rotate_heads
from ..prefix import find_prefix
from ..walk import Batches, Spill

__all__ = ["Preservation", "fill"]


@dataclass
class Preservation:
    """What a preserving method chose beyond the units kept per dimension (those are the transfer
    report's ``choices``), so a result can be inspected and reproduced."""

    method: str
    layers: dict[str, list[int]] = field(default_factory=dict)  # layer stack -> kept source layers
    layer_choice: str = "first"
    rotated: list[str] = field(default_factory=list)  # dimensions rotated to principal directions
    # residual rotation: each small norm's gain factor (the share of the stream its kept channels carry)
    residual_scales: dict[str, float] = field(default_factory=dict)
    compensated: list[str] = field(default_factory=list)  # layers refit, in forward order
    not_compensated: dict[str, str] = field(default_factory=dict)  # resized layers left as chosen, and why
    calibration: str | None = None  # where the calibration examples came from (a path), when known
    calibration_examples: int = 0
    strengths: dict[str, float | str] = field(default_factory=dict)  # each refit's pull towards the choice
    held_out: dict[str, float] = field(default_factory=dict)  # each refit's held-out error / the choice's
    held_out_examples: int = 0  # calibration examples held out to choose the strengths

    def to_dict(self) -> dict:
        return asdict(self)




@torch.no_grad()
def fill(
    source: nn.Module,
    target: nn.Module,
    method: str,
    *,
    inputs: dict[str, Any] | Batches | None = None,
    compensate_layers: bool = False,
    layers: str = "first",
    rotate: bool | str = False,
    seed: int = 0,
    batch_size: int | None = None,
    budget: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[Any, Preservation]:
    """Fill ``target`` in place from ``source`` with a preserving ``method``; return the transfer report
    and what was chosen. ``inputs`` is one batch of calibration inputs (``calibration.calibration_inputs``)
    or ``Batches`` of them; a batch is split into mini-batches of ``batch_size`` examples. Every statistic
    is summed over the mini-batches, so the result does not depend on their size (within float rounding);
    ``budget`` bounds the boundary activations compensation keeps in memory (bytes; the rest spill to disk)."""
    check_recipe(method, calibration=inputs is not None, compensate=compensate_layers, layers=layers, rotate=rotate)
    batches = Batches.of(inputs, batch_size) if inputs is not None else None
    heads, residual = rotation_parts(rotate)
    passes = (method == "calibrated") + heads + 2 * residual + 2 * compensate_layers + (layers == "importance")
    if batches is not None and passes > 1:  # what the shrink leaves as it is runs once, not once per pass
        batches.shared = find_prefix(source, target, batches, Spill(budget))
    try:
        return _fill(source, target, method, batches, compensate_layers, layers, rotate, seed, budget, progress)
    finally:
        if batches is not None and batches.shared is not None:
            batches.shared.close()
            batches.shared = None


def _fill(source: nn.Module, target: nn.Module, method: str, batches: Batches | None, compensate_layers: bool,
          layers: str, rotate: bool | str, seed: int, budget: int | None,
          progress: Callable[[int, int], None] | None) -> tuple[Any, Preservation]:
    """``fill`` once the calibration batches are made (and share what every pass computes alike)."""
    inputs = batches
    record = Preservation(method, layer_choice=layers, calibration_examples=batches.examples if batches else 0)
    plan = make_plan(source, target)
    kept_layers = {}
    for dim in plan.dimensions:
        if dim.kind == "layers" and dim.target < dim.source:
            # a backbone stage's first layer changes width and stride (its shortcut too): stages keep the first
            how = "first" if RULES.stage_layers.search(dim.name) else layers
            influence = layer_influence(source, dim.name, inputs) if how == "importance" else None
            kept_layers[dim.name] = choose_layers(how, dim.source, dim.target, influence)
            record.layers[dim.name] = kept_layers[dim.name].tolist()
    rename = layer_name_map(kept_layers)  # target name -> source name
    full, rotated, turn = source, {}, None
    heads, residual = rotation_parts(rotate)
    if residual:  # the whole source, rotated (same function): its own forward still gives the targets
        turn = rotate_residual(source, target, plan, inputs, rename)
        if turn is not None:
            full, rotated = turn.model, dict(turn.choices)
            record.residual_scales = {name: round(c, 6) for name, (_, _, c) in turn.scales.items()}
    if heads:
        full, turned = rotate_heads(full, plan, inputs, rename)
        rotated.update(turned)
    record.rotated = sorted(rotated)
    if method == "calibrated":
        choices = choose(plan, activation_scores(full, plan, inputs, rename))
    elif method == "magnitude":
        choices = choose(plan, magnitude_scores(full.state_dict(), plan, rename))
    else:  # select / first: the plan's own choice for every dimension
        choices = {}
    choices.update({**rotated, **kept_layers})
    structured = method if method in names(Kind.STRUCTURED) else "select"
    report = transfer(full, target, structured, plan=plan, choices=choices, seed=seed)
    report.method = method
    report.source_parameters = count_parameters(source)  # a rotated copy may hold an untied output layer
    if turn is not None:  # the small model's norms, for a stream of fewer channels
        turn.settle(target)
    if compensate_layers:
        assert inputs is not None
        everything = {name: torch.as_tensor(index) for name, index in report.choices.items()}
        done = compensate(full, target, inputs, _kept(plan, everything, full.state_dict(), rename),
                          source_name=rename, scale=_temperature(plan), budget=budget, progress=progress)
        record.compensated, record.not_compensated = done.layers, done.skipped
        record.strengths, record.held_out, record.held_out_examples = done.strengths, done.held_out, \
            done.held_out_examples
    return report, record


def _kept(plan: Plan, choices: dict[str, Tensor], state: dict[str, Tensor], rename) -> Callable[[str], Tensor | None]:
    """Target layer name -> source output indices it keeps (its weight's output axis, as the transfer
    filled it), or None when that axis kept every unit."""
    def kept(name: str) -> Tensor | None:
        tensor = f"{name}.weight"
        source = state.get(rename(tensor))
        if source is None:
            return None
        return output_index(plan, tensor, source.shape[0], choices)  # -1 marks a grown unit: compensate skips it

    return kept


def _temperature(plan: Plan) -> Callable[[str], float]:
    """Scale of each query/key projection's refit targets when its head width is cut: attention divides
    the logits by ``sqrt(width)``, so a narrower head sharpens them by ``sqrt(source/target)`` while the
    kept channels carry only part of the dot product. Scaling queries and keys each by
    ``(source/target)^(1/4)`` keeps the logits nearer the source's; on the demo source at the 3/4 cut it
    measured 0.309 mAP@50 against 0.296 unscaled (ridge 1e-2), and the power 1/2 did no better."""
    factors = {}
    for dim in plan.dimensions:
        if dim.kind == "head_dim" and dim.target < dim.source:
            for axis in query_key_axes(dim)[0]:
                factors[axis.tensor.rpartition(".")[0]] = (dim.source / dim.target) ** 0.25
    return lambda name: factors.get(name, 1.0)
