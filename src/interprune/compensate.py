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

from .walk import Batches, Spill, Stop, Walker

__all__ = ["Compensation", "compensate", "refittable", "layer_errors", "Moments", "NormMoments", "LayerStats",
           "record", "refit", "solve_linear", "solve_norm"]

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


def _accumulate(stats: list[Tensor], *terms: Tensor) -> list[Tensor]:
    if not stats:
        stats.extend(t.clone() for t in terms)
    else:
        for s, t in zip(stats, terms):
            s += t
    return stats


# ------------------------------------------------------------------------------ recording and refitting
@dataclass
class Moments:
    """Sufficient statistics of a least-squares refit ``x -> y`` over the rows seen so far: ``X^T X``,
    ``X^T Y`` (``x`` with a column of ones when the layer has a bias) and ``trace(Y^T Y)``; float64."""

    xx: Tensor | None = None
    xy: Tensor | None = None
    yy: float = 0.0
    rows: int = 0

    def add(self, x: Tensor, y: Tensor, gram: Tensor | None = None) -> None:
        gram = x.T @ x if gram is None else gram
        self.xx = gram.clone() if self.xx is None else self.xx + gram
        self.xy = x.T @ y if self.xy is None else self.xy + x.T @ y
        self.yy += float((y * y).sum())
        self.rows += x.shape[0]


@dataclass
class NormMoments:
    """Per-channel sums for a layer norm's gain and shift: normalised input ``n`` and target ``y``."""

    sums: list[Tensor] = field(default_factory=list)  # n, y, n*n, n*y, count

    def add(self, n: Tensor, y: Tensor) -> None:
        _accumulate(self.sums, n.sum(0), y.sum(0), (n * n).sum(0), (n * y).sum(0), torch.full_like(n[0], n.shape[0]))

    @property
    def rows(self) -> int:
        return int(self.sums[-1][0]) if self.sums else 0


@dataclass
class LayerStats:
    """What recording keeps for one layer: its fit part and, when some calibration examples are held
    out, the held-out part (for a solver that picks its own strength on them)."""

    fit: Moments | NormMoments
    held: Moments | NormMoments | None = None


def solve_linear(stats: Moments, ridge: float, bias: bool) -> tuple[Tensor, Tensor | None]:
    """Ridge least squares ``[x, 1] @ [W^T; b] = y`` from accumulated moments; the ridge is relative to
    the inputs' energy so one value suits layers of any scale, and keeps collinear inputs well posed.
    Returns ``(weight (out, in), bias or None)``."""
    gram, cross = stats.xx, stats.xy
    features = gram.shape[0] - (1 if bias else 0)
    eye = torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
    if bias:
        eye[-1, -1] = 0  # the bias is not shrunk
    lam = ridge * gram.diagonal()[:features].mean().clamp_min(1e-12)
    solution = torch.linalg.solve(gram + lam * eye, cross)  # (in [+1], out)
    return solution[:features].T, (solution[-1] if bias else None)


def solve_norm(stats: NormMoments) -> tuple[Tensor, Tensor]:
    """Per channel, the gain and shift that best map the normalised input to the target output."""
    sn, sy, snn, sny, cnt = stats.sums
    mean_n, mean_y = sn / cnt, sy / cnt
    var_n = (snn / cnt - mean_n**2).clamp_min(1e-12)
    gain = (sny / cnt - mean_n * mean_y) / var_n
    return gain, mean_y - gain * mean_n


def _has_bias(module: nn.Module) -> bool:
    return getattr(module, "bias", None) is not None


def record(module: nn.Module, stats: LayerStats | None, x: Tensor, y: Tensor, *, held: bool = False,
           grams: dict | None = None) -> LayerStats:
    """Add one mini-batch of a layer's input rows ``x`` and target rows ``y`` to its statistics (layers
    that read the same input share one ``X^T X`` through ``grams``)."""
    if isinstance(module, nn.LayerNorm):
        stats = stats or LayerStats(NormMoments())
        if held and stats.held is None:
            stats.held = NormMoments()
        n = (x - x.mean(-1, keepdim=True)) / torch.sqrt(x.var(-1, unbiased=False, keepdim=True) + module.eps)
        (stats.held if held else stats.fit).add(n, y)
        return stats
    bias = _has_bias(module)
    xa = torch.cat([x, torch.ones_like(x[:, :1])], 1) if bias else x
    key = (id(x), bias)
    gram = grams.get(key) if grams is not None else None
    if gram is None:
        gram = xa.T @ xa
        if grams is not None:
            grams[key] = gram
    stats = stats or LayerStats(Moments())
    if held and stats.held is None:
        stats.held = Moments()
    (stats.held if held else stats.fit).add(xa, y, gram)
    return stats


def refit(module: nn.Module, stats: LayerStats, ridge: float) -> None:
    """Write the solution of ``stats`` into ``module`` (in its own dtype)."""
    if isinstance(module, nn.LayerNorm):
        gain, shift = solve_norm(stats.fit)
        module.weight.data.copy_(gain.to(module.weight.dtype))
        if module.bias is not None:
            module.bias.data.copy_(shift.to(module.bias.dtype))
        return
    weight, bias = solve_linear(stats.fit, ridge, _has_bias(module))
    module.weight.data.copy_(weight.reshape(module.weight.shape).to(module.weight.dtype))
    if bias is not None:
        module.bias.data.copy_(bias.to(module.bias.dtype))


# ------------------------------------------------------------------------------------------- the walk
@torch.no_grad()
def compensate(
    source: nn.Module,
    target: nn.Module,
    inputs: Batch | Batches,
    kept: Callable[[str], Tensor | None],
    *,
    source_name: Callable[[str], str] = lambda name: name,
    scale: Callable[[str], float] = lambda name: 1.0,
    ridge: float = 1e-3,
    layers: list[str] | None = None,
    budget: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Compensation:
    """Refit ``target``'s resized layers in place so their outputs on ``inputs`` match ``source``'s.

    ``inputs`` is one batch of model inputs or ``Batches`` of them. Layers are refit in forward order,
    each on the target's own inputs (after the refits before it) over every mini-batch: the sequential
    engine (``walk.Walker``) runs each stage from the last stored boundary. ``kept(name)`` gives the
    source output indices that target layer ``name`` keeps (None: all), ``source_name`` maps a target
    module name to its source counterpart (they differ when layers were dropped), and ``scale(name)``
    multiplies the layer's target outputs (the attention-temperature correction for query/key projections
    when the head width changes). By default every layer with a resized parameter is refit; ``layers``
    names them explicitly. ``budget`` (bytes) bounds the boundaries kept in memory; the rest go to disk.
    """
    batches = Batches.of(inputs)
    report = Compensation(ridge=ridge)
    modules = dict(target.named_modules())
    active = _active(source, target, kept, source_name, layers, report)
    spill = Spill(budget)
    walkers = Walker(target.eval(), batches, spill), Walker(source.eval(), batches, spill)
    try:
        for walker in walkers:
            walker.trace()
        stages = _stages(walkers[0], active, report)
        stats: dict[str, LayerStats] = {}
        versions = _versions(walkers[0], active)
        for done, stage in enumerate(stages):
            _run_stage(walkers, stage, stats, kept, source_name, scale, report)
            for name, k in stage:
                if name in stats and name not in report.skipped:
                    refit(modules[name], stats[name], ridge)
                    if name in versions:
                        versions[name][k] = [p.detach().clone() for p in modules[name].parameters(recurse=False)]
                    if name not in report.layers:
                        report.layers.append(name)
                    report.rows = max(report.rows, stats[name].fit.rows)
            if progress is not None:
                progress(done + 1, len(stages))
        for name, saved in versions.items():  # the model keeps each layer's last refit
            _use_version(modules[name], saved, len(walkers[0].calls[name]))
    finally:
        for walker in walkers:
            walker.close()
        spill.close()
    return report


def _versions(target: Walker, active: list[str]) -> dict[str, dict[int, list[Tensor]]]:
    """A layer called several times per forward is refit at each call (on all its calls so far), and
    call ``k`` runs with the weights of its ``k``-th refit, as one forward with a refit before each call
    would; later passes of the walk put those weights back for that call."""
    versions: dict[str, dict[int, list[Tensor]]] = {}
    for name in active:
        if len(target.calls.get(name, [])) > 1:
            versions[name] = {}
            target.on_call[name] = (lambda saved: lambda module, k: _use_version(module, saved, k))(versions[name])
    return versions


def _use_version(module: nn.Module, saved: dict[int, list[Tensor]], call: int) -> None:
    done = [k for k in saved if k <= call]
    if done:
        for param, value in zip(module.parameters(recurse=False), saved[max(done)]):
            param.data.copy_(value)


def _active(source: nn.Module, target: nn.Module, kept: Callable, source_name: Callable, layers: list[str] | None,
            report: Compensation) -> list[str]:
    """The target layers to refit: resized refittable ones with a source counterpart that was not grown."""
    src_state = source.state_dict()
    modules, src_modules = dict(target.named_modules()), dict(source.named_modules())
    names = layers if layers is not None else [
        n for n, m in modules.items() if refittable(m) and _resized(n, m, src_state)]
    active = []
    for name in names:
        index = kept(name)
        if src_modules.get(source_name(name)) is None:
            report.skipped[name] = "no source counterpart"
        elif index is not None and bool((index < 0).any()):
            report.skipped[name] = "grown: its new units have no source output to match"
        elif name in modules:
            active.append(name)
    return active


def _stages(target: Walker, active: list[str], report: Compensation) -> list[list[tuple[str, int]]]:
    """(layer, call) pairs in forward order; consecutive ones that read the same tensor form one stage
    (queries, keys and values: one pass over the data refits all three)."""
    events = []
    for name in active:
        calls = target.calls.get(name, [])
        if not calls:
            report.skipped[name] = "not run on the calibration inputs, or called with keywords"
        events += [(c.enter, c.input_id, name, k) for k, c in enumerate(calls)]
    events.sort()
    stages: list[list[tuple[str, int]]] = []
    last = None
    for _, input_id, name, k in events:
        if stages and input_id is not None and input_id == last:
            stages[-1].append((name, k))
        else:
            stages.append([(name, k)])
        last = input_id
    return stages


def _run_stage(walkers: tuple[Walker, Walker], stage: list[tuple[str, int]], stats: dict[str, LayerStats],
               kept: Callable, source_name: Callable, scale: Callable, report: Compensation) -> None:
    """One pass over the mini-batches: the stage's inputs from the target, the kept outputs of their
    counterparts from the source, recorded into ``stats``."""
    target, source = walkers
    counterparts = {}
    for name, k in stage:
        src = source_name(name)
        calls = source.calls.get(src, [])
        if calls:
            counterparts[(name, k)] = (src, min(k, len(calls) - 1))
        else:
            report.skipped.setdefault(name, "not run on the calibration inputs, or called with keywords")
    if not counterparts:
        return
    target.prepare(min(target.enter(n, k) for n, k in counterparts))
    source.prepare(min(source.enter(*c) for c in counterparts.values()))
    index = {key: kept(key[0]) for key in counterparts}
    for i in range(len(target.batches)):
        xs = _capture(target, list(counterparts), i, "pre")
        ys = _capture(source, list(dict.fromkeys(counterparts.values())), i, "post")
        grams: dict = {}
        rows: dict[tuple[int, bool], Tensor] = {}  # layers reading one tensor share its rows and X^T X
        for (name, k), src in counterparts.items():
            module = target.modules[name]
            x, y = xs.get((name, k)), ys.get(src)
            if x is None or y is None:
                report.skipped.setdefault(name, "not run on the calibration inputs, or called with keywords")
                continue
            conv = isinstance(module, nn.Conv2d)
            if index[(name, k)] is not None:
                y = y.index_select(1 if conv else -1, index[(name, k)].to(y.device))
            if (id(x), conv) not in rows:
                rows[(id(x), conv)] = _rows(x, conv)
            x = rows[(id(x), conv)]
            y = _rows(y, conv) * scale(name)
            width = module.normalized_shape[0] if isinstance(module, nn.LayerNorm) else module.weight.shape[0]
            if x.shape[0] != y.shape[0] or y.shape[1] != width:
                report.skipped[name] = f"{x.shape[0]}x{width} outputs, but the source gave {tuple(y.shape)}"
                continue
            stats[name] = record(module, stats.get(name), x, y, grams=grams)


def _capture(walker: Walker, calls: list[tuple[str, int]], i: int, kind: str) -> dict[tuple[str, int], Tensor]:
    """First positional input (``pre``) or output (``post``) of each ``(module, call)`` on mini-batch ``i``,
    stopping the forward once all are seen."""
    seen: dict[tuple[str, int], Tensor] = {}

    def grab(key: tuple[str, int]) -> Callable:
        def fn(module: nn.Module, args: tuple, kwargs: dict, *output: Any) -> None:
            value = output[0] if output else (args[0] if args and isinstance(args[0], Tensor) else None)
            if isinstance(value, Tensor):
                seen[key] = value.detach()
            if len(seen) == len(calls):
                raise Stop
        return fn

    walker.run(i, [(name, k, kind, grab((name, k))) for name, k in calls])
    return seen


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

