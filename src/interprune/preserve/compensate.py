"""Compensation: refit a shrunk model's layers so they reproduce the source's outputs, in closed form.

Keeping a subset of units throws away what the dropped units contributed; every layer that reads a
resized dimension then sees inputs the source never produced. Least squares repairs most of that
without training: for each resized ``nn.Linear`` (and 1x1 convolution) of the small model, find the
weights that best map *its own* inputs on calibration data to the source layer's outputs at the kept
output units (ridge regression, one solve per layer); for each resized ``nn.LayerNorm``, refit its
per-channel gain and shift the same way, which corrects the statistics the cut changed (a mean and a
variance over fewer channels).

Order matters. The refit runs in forward order inside one forward pass of the small model: a
pre-hook refits each layer just before it runs, so every later layer is fitted to the inputs the
already-repaired earlier layers really produce, parameter-free parts included (the small model's own
sine position embeddings, which differ from the source's at some cuts). Fitting on the source's
inputs instead ignores those differences and keeps much less (see ``benchmarks/retention.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import Tensor, nn

__all__ = ["Compensation", "compensate", "refittable", "layer_errors"]

Batch = dict[str, Any]


@dataclass
class Compensation:
    """What compensation did: the layers refit, in order, and the ridge strength used."""

    layers: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # layer -> why it was left as chosen
    ridge: float = 1e-3
    rows: int = 0  # activation rows (examples x tokens) each refit saw, at most

    def to_dict(self) -> dict:
        return {"layers": self.layers, "skipped": self.skipped, "ridge": self.ridge, "rows": self.rows}


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


@torch.no_grad()
def compensate(
    source: nn.Module,
    target: nn.Module,
    inputs: Batch,
    kept: Callable[[str], Tensor | None],
    *,
    source_name: Callable[[str], str] = lambda name: name,
    scale: Callable[[str], float] = lambda name: 1.0,
    ridge: float = 1e-3,
    layers: list[str] | None = None,
) -> Compensation:
    """Refit ``target``'s resized layers in place so their outputs on ``inputs`` match ``source``'s.

    ``inputs`` is one batch of model inputs (all calibration examples at once: the refit of a layer
    sees every example). ``kept(name)`` gives the source output indices that target layer ``name``
    keeps (None: all), ``source_name`` maps a target module name to its source counterpart (they
    differ when layers were dropped), and ``scale(name)`` multiplies the layer's target outputs (the
    attention-temperature correction for query/key projections when the head width changes). By
    default every layer with a resized parameter is refit; ``layers`` names them explicitly.
    """
    src_state = source.state_dict()
    modules = dict(target.named_modules())
    names = layers if layers is not None else [
        n for n, m in modules.items() if refittable(m) and _resized(n, m, src_state)]
    src_modules = dict(source.named_modules())
    recorded: dict[str, list[Tensor]] = {n: [] for n in names}
    report = Compensation(ridge=ridge)

    def record(name: str) -> Callable:
        index = kept(name)

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
            handles.append(counterpart.register_forward_hook(record(name)))
    try:
        source.eval()(**inputs)
    finally:
        for h in handles:
            h.remove()

    sums: dict[str, list[Tensor]] = {}  # sufficient statistics over the calls seen so far

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
            x = _rows(args[0], conv)
            y = _rows(outputs[min(k, len(outputs) - 1)], conv) * scale(name)  # call k of the source's calls
            width = module.normalized_shape[0] if isinstance(module, nn.LayerNorm) else module.weight.shape[0]
            if x.shape[0] != y.shape[0] or y.shape[1] != width:
                report.skipped[name] = f"{x.shape[0]}x{width} outputs, but the source gave {tuple(y.shape)}"
                return
            if isinstance(module, nn.LayerNorm):
                _refit_norm(module, x, y, sums.setdefault(name, []))
            else:
                _refit_linear(module, x, y, sums.setdefault(name, []), ridge)
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


def _accumulate(stats: list[Tensor], *terms: Tensor) -> list[Tensor]:
    if not stats:
        stats.extend(t.clone() for t in terms)
    else:
        for s, t in zip(stats, terms):
            s += t
    return stats


def _refit_linear(module: nn.Module, x: Tensor, y: Tensor, stats: list[Tensor], ridge: float) -> None:
    """Ridge least squares ``[x, 1] @ [W^T; b] = y``; the ridge is relative to the inputs' energy so
    one value suits layers of any scale, and keeps the solve well posed when inputs are collinear."""
    bias = getattr(module, "bias", None) is not None
    xa = torch.cat([x, torch.ones_like(x[:, :1])], 1) if bias else x
    gram, cross = _accumulate(stats, xa.T @ xa, xa.T @ y)
    eye = torch.eye(gram.shape[0], dtype=gram.dtype)
    if bias:
        eye[-1, -1] = 0  # the bias is not shrunk
    lam = ridge * gram.diagonal()[: x.shape[1]].mean().clamp_min(1e-12)
    solution = torch.linalg.solve(gram + lam * eye, cross)  # (in [+1], out)
    weight = solution[: x.shape[1]].T
    module.weight.data.copy_(weight.reshape(module.weight.shape).to(module.weight.dtype))
    if bias:
        module.bias.data.copy_(solution[-1].to(module.bias.dtype))


def _refit_norm(module: nn.LayerNorm, x: Tensor, y: Tensor, stats: list[Tensor]) -> None:
    """Per channel, the gain and shift that best map the normalised input to the source's output."""
    n = (x - x.mean(-1, keepdim=True)) / torch.sqrt(x.var(-1, unbiased=False, keepdim=True) + module.eps)
    count = torch.full_like(n[0], n.shape[0])
    sn, sy, snn, sny, cnt = _accumulate(stats, n.sum(0), y.sum(0), (n * n).sum(0), (n * y).sum(0), count)
    mean_n, mean_y = sn / cnt, sy / cnt
    var_n = (snn / cnt - mean_n**2).clamp_min(1e-12)
    gain = (sny / cnt - mean_n * mean_y) / var_n
    module.weight.data.copy_(gain.to(module.weight.dtype))
    if module.bias is not None:
        module.bias.data.copy_((mean_y - gain * mean_n).to(module.bias.dtype))


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

