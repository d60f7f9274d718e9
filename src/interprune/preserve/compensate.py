"""Compensation: refit a shrunk model's layers so they reproduce the source's outputs, in closed form.

Keeping a subset of units throws away what the dropped units contributed; every layer that reads a
resized dimension then sees inputs the source never produced. Least squares repairs most of that
without training: for each resized ``nn.Linear`` (and 1x1 convolution) of the small model, find the
weights that best map *its own* inputs on calibration data to the source layer's outputs at the kept
output units (ridge regression, one solve per layer); for each resized ``nn.LayerNorm``, refit its
per-channel gain and shift the same way, which corrects the statistics the cut changed (a mean and a
variance over fewer channels).

Each refit is regularised towards the weights the choice gave (``refit.py``): a few hundred calibration
examples are fitted closely by a free least-squares refit, which then generalises badly to inputs unlike
them. Every fourth calibration example is held out; for each layer the strength of the pull towards the
chosen weights is picked from a grid by the error on those examples (including "no refit at all"), then
the layer is refit on every example with it. ``interprune.json`` records each layer's strength.

Order matters. The refit runs in forward order inside one forward pass of the small model: a
pre-hook refits each layer just before it runs, so every later layer is fitted to the inputs the
already-repaired earlier layers really produce, parameter-free parts included (the small model's own
sine position embeddings, which differ from the source's at some cuts). Fitting on the source's
inputs instead ignores those differences and keeps much less (see ``benchmarks/retention.py``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import Tensor, nn

from .refit import GRID, Choice, channel_moments, choose_strength, moments

__all__ = ["Compensation", "compensate", "refittable", "layer_errors", "held_out_rows"]

Batch = dict[str, Any]
HOLD_OUT_EVERY = 4  # every fourth calibration example is held out to choose each refit's strength


@dataclass
class Compensation:
    """What compensation did: the layers refit, in order, and the strength each refit was pulled towards
    the choice's weights with (``"inf"``: the held-out examples preferred the choice itself)."""

    layers: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # layer -> why it was left as chosen
    strengths: dict[str, float | str] = field(default_factory=dict)
    held_out: dict[str, float] = field(default_factory=dict)  # held-out error of the refit / of the choice
    rows: int = 0  # activation rows (examples x tokens) each refit saw, at most
    held_out_examples: int = 0

    def to_dict(self) -> dict:
        return {"layers": self.layers, "skipped": self.skipped, "strengths": self.strengths,
                "held_out": self.held_out, "rows": self.rows, "held_out_examples": self.held_out_examples}


def refittable(module: nn.Module) -> bool:
    """Layers with a closed-form refit: linear maps over the last axis (or channels) and layer norms."""
    if isinstance(module, nn.Linear):
        return True
    if isinstance(module, nn.Conv2d):
        return module.kernel_size == (1, 1) and module.groups == 1 and module.stride == (1, 1)
    return isinstance(module, nn.LayerNorm) and module.elementwise_affine


def _rows(x: Tensor, conv: bool) -> Tensor:
    """Activations as (examples, features): channels last for convolutions."""
    if conv:
        x = x.movedim(1, -1)
    return x.reshape(-1, x.shape[-1]).double()


def _resized(name: str, module: nn.Module, source: dict[str, Tensor]) -> bool:
    return any(source.get(f"{name}.{p}") is not None and source[f"{name}.{p}"].shape != value.shape
               for p, value in module.named_parameters(recurse=False))


def held_out_rows(shape: torch.Size, examples: int, every: int = HOLD_OUT_EVERY) -> Tensor:
    """Which activation rows are held out: those of every ``every``-th calibration example (whole
    examples, so held-out tokens never share a sentence or an image with fitted ones). A layer whose
    input does not lead with the example axis holds out every ``every``-th row instead."""
    rows = 1
    for size in shape[:-1]:
        rows *= size
    if examples < every:
        return torch.zeros(rows, dtype=torch.bool)
    if len(shape) >= 2 and shape[0] == examples:
        held = torch.arange(examples) % every == every - 1
        return held.repeat_interleave(rows // examples)
    return torch.arange(rows) % every == every - 1


def _batch_size(inputs: Batch) -> int:
    first = next((v for v in inputs.values() if isinstance(v, Tensor)), None)
    return int(first.shape[0]) if first is not None and first.dim() else 0


@torch.no_grad()
def compensate(
    source: nn.Module,
    target: nn.Module,
    inputs: Batch,
    kept: Callable[[str], Tensor | None],
    *,
    source_name: Callable[[str], str] = lambda name: name,
    scale: Callable[[str], float] = lambda name: 1.0,
    ridge: float | None = None,
    grid: tuple[float, ...] = GRID,
    layers: list[str] | None = None,
) -> Compensation:
    """Refit ``target``'s resized layers in place so their outputs on ``inputs`` match ``source``'s.

    ``inputs`` is one batch of model inputs (all calibration examples at once: the refit of a layer
    sees every example). ``kept(name)`` gives the source output indices that target layer ``name``
    keeps (None: all), ``source_name`` maps a target module name to its source counterpart (they
    differ when layers were dropped), and ``scale(name)`` multiplies the layer's target outputs (the
    attention-temperature correction for query/key projections when the head width changes). Each refit
    is pulled towards the layer's weights as chosen (``refit.choose_strength``): with ``ridge`` None the
    strength is chosen from ``grid`` on every fourth calibration example, held out, else ``ridge`` is
    used as given. By default every layer with a resized parameter is refit; ``layers`` names them.
    """
    src_state = source.state_dict()
    modules = dict(target.named_modules())
    names = layers if layers is not None else [
        n for n, m in modules.items() if refittable(m) and _resized(n, m, src_state)]
    report = Compensation()
    recorded = _record_source(source, inputs, names, kept, source_name, report)
    examples = _batch_size(inputs)
    fixed = None if ridge is None else (ridge,)
    if fixed is None and examples >= HOLD_OUT_EVERY:
        report.held_out_examples = examples // HOLD_OUT_EVERY
    sums: dict[str, list] = {}  # per layer: [fit stats, held-out stats, the choice's weights]

    def refit(name: str) -> Callable:
        calls = {"n": 0}

        def hook(module: nn.Module, args: tuple) -> None:
            k = calls["n"]
            calls["n"] += 1
            outputs = recorded.get(name) or []
            if not outputs or not args or not isinstance(args[0], Tensor):
                report.skipped.setdefault(name, "not run on the calibration inputs, or called with keywords")
                return
            conv = isinstance(module, nn.Conv2d)
            raw = args[0].movedim(1, -1) if conv else args[0]
            x = _rows(args[0], conv)
            y = _rows(outputs[min(k, len(outputs) - 1)], conv) * scale(name)  # call k of the source's calls
            width = module.normalized_shape[0] if isinstance(module, nn.LayerNorm) else module.weight.shape[0]
            if x.shape[0] != y.shape[0] or y.shape[1] != width:
                report.skipped[name] = f"{x.shape[0]}x{width} outputs, but the source gave {tuple(y.shape)}"
                return
            held = held_out_rows(raw.shape, examples) if fixed is None else torch.zeros(x.shape[0], dtype=torch.bool)
            choice = _refit(module, x, y, held, sums.setdefault(name, []), fixed or grid)
            report.strengths[name] = "inf" if math.isinf(choice.strength) else choice.strength
            if choice.errors:
                report.held_out[name] = round(min(choice.errors.values()), 6)
            if name not in report.layers:
                report.layers.append(name)
                report.rows = max(report.rows, x.shape[0])

        return hook

    handles = [modules[n].register_forward_pre_hook(refit(n)) for n in names if n in modules and n in recorded]
    try:
        target.eval()(**inputs)
    finally:
        for h in handles:
            h.remove()
    return report


def _record_source(source: nn.Module, inputs: Batch, names: list[str], kept: Callable[[str], Tensor | None],
                   source_name: Callable[[str], str], report: Compensation) -> dict[str, list[Tensor]]:
    """One forward pass of the source, keeping each refit layer's outputs at the units its target keeps."""
    src_modules = dict(source.named_modules())
    recorded: dict[str, list[Tensor]] = {n: [] for n in names}

    def record(name: str, index: Tensor | None) -> Callable:
        def hook(module: nn.Module, args: tuple, output: Tensor) -> None:
            out = output.detach()  # only the kept outputs are stored: a fraction of the memory when cutting
            if index is not None:
                out = out.index_select(1 if isinstance(module, nn.Conv2d) else -1, index.to(out.device))
            recorded[name].append(out)
        return hook

    handles = []
    for name in names:
        counterpart = src_modules.get(source_name(name))
        index = kept(name)
        if counterpart is None:
            report.skipped[name] = "no source counterpart"
        elif index is not None and bool((index < 0).any()):
            report.skipped[name] = "grown: its new units have no source output to match"
        else:
            handles.append(counterpart.register_forward_hook(record(name, index)))
    try:
        source.eval()(**inputs)
    finally:
        for h in handles:
            h.remove()
    return recorded


def _refit(module: nn.Module, x: Tensor, y: Tensor, held: Tensor, stats: list, grid: tuple[float, ...]) -> Choice:
    """Accumulate this call's statistics (fit and held-out rows apart) and set the module's weights to the
    refit the held-out rows prefer; the prior is the module's weights as they were before its first refit."""
    norm = isinstance(module, nn.LayerNorm)
    bias = getattr(module, "bias", None) is not None
    if norm:
        x = (x - x.mean(-1, keepdim=True)) / torch.sqrt(x.var(-1, unbiased=False, keepdim=True) + module.eps)
        make = channel_moments
    else:
        x = torch.cat([x, torch.ones_like(x[:, :1])], 1) if bias else x
        make = moments
    parts = (make(x[~held], y[~held]), make(x[held], y[held]) if bool(held.any()) else None)
    if not stats:
        stats.extend([*parts, _prior(module, norm, bias)])
    else:
        stats[0] = stats[0] + parts[0]
        stats[1] = parts[1] if stats[1] is None else (stats[1] if parts[1] is None else stats[1] + parts[1])
    choice = choose_strength(stats[0], stats[1], stats[2], grid)
    _assign(module, choice.weight, norm, bias)
    return choice


def _prior(module: nn.Module, norm: bool, bias: bool) -> Tensor:
    """The weights as chosen, in the refit's layout: (in [+1], out), or (channels, 2, 1) for a norm."""
    weight = module.weight.detach().double()
    if norm:
        shift = module.bias.detach().double() if bias else torch.zeros_like(weight)
        return torch.stack([weight, shift], -1).unsqueeze(-1)
    w = weight.reshape(weight.shape[0], -1).T
    return torch.cat([w, module.bias.detach().double()[None]], 0) if bias else w


def _assign(module: nn.Module, solution: Tensor, norm: bool, bias: bool) -> None:
    if norm:
        module.weight.data.copy_(solution[:, 0, 0].to(module.weight.dtype))
        if bias:
            module.bias.data.copy_(solution[:, 1, 0].to(module.bias.dtype))
        return
    inputs = module.weight[0].numel()
    module.weight.data.copy_(solution[:inputs].T.reshape(module.weight.shape).to(module.weight.dtype))
    if bias:
        module.bias.data.copy_(solution[-1].to(module.bias.dtype))


@torch.no_grad()
def layer_errors(
    source: nn.Module,
    target: nn.Module,
    inputs: Batch,
    names: list[str],
    kept: Callable[[str], Tensor | None],
    source_name: Callable[[str], str] = lambda name: name,
) -> dict[str, float]:
    """Relative error ``|y_target - y_source[kept]| / |y_source[kept]|`` of each named layer's output
    on ``inputs`` (first call of each layer): how far the small model is from the source inside."""
    outs: dict[tuple[str, str], Tensor] = {}

    def grab(key: tuple[str, str]) -> Callable:
        def hook(module: nn.Module, args: tuple, output: Tensor) -> None:
            outs.setdefault(key, output.detach())
        return hook

    handles = []
    for which, model, mapping in (("s", source, source_name), ("t", target, lambda n: n)):
        mods = dict(model.named_modules())
        handles += [mods[mapping(n)].register_forward_hook(grab((which, n))) for n in names if mapping(n) in mods]
    try:
        source.eval()(**inputs)
        target.eval()(**inputs)
    finally:
        for h in handles:
            h.remove()
    errors = {}
    for n in names:
        if ("s", n) not in outs or ("t", n) not in outs:
            continue
        conv = outs[("s", n)].dim() == 4
        ys, yt = _rows(outs[("s", n)], conv), _rows(outs[("t", n)], conv)
        index = kept(n)
        if index is not None:
            ys = ys[:, index]
        errors[n] = float((yt - ys).norm() / ys.norm().clamp_min(1e-12))
    return errors

