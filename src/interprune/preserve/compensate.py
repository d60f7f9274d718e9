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

Order matters. Layers are refit in forward order, each on the small model's own inputs after the
refits before it (the sequential engine, ``walk.py``, runs each stage over every mini-batch from the
last stored boundary; recording a layer's statistics is apart from solving for it), so every later layer
is fitted to the inputs the already-repaired earlier layers really produce, parameter-free parts included (the small model's own
sine position embeddings, which differ from the source's at some cuts). Fitting on the source's
inputs instead ignores those differences and keeps much less (see ``benchmarks/retention.py``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import Tensor, nn

from .refit import GRID, Bases, Choice, Moments, add_shared, channel_moments, choose_strength, group_moments, row_chunks
from ..walk import Batches, Spill, Stop, Walker, outer_block

__all__ = ["Compensation", "compensate", "refittable", "layer_errors", "Moments", "LayerStats", "record", "refit",
           "held_out_rows", "conv_patches", "sample_rows"]

Batch = dict[str, Any]
HOLD_OUT_EVERY = 4  # every fourth calibration example is held out to choose each refit's strength
LOOK_AHEAD = True  # a source pass also captures the next stage's outputs when they lie further on in its block
MAX_ROWS = 65536  # convolution outputs are sampled to at most this many positions per call (memory)


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
    """Layers with a closed-form refit: linear maps over the last axis (or channels), convolutions of any
    kernel and stride (a linear map of their input patches) and layer norms."""
    if isinstance(module, nn.Linear):
        return True
    if isinstance(module, nn.Conv2d):
        return module.groups == 1 and module.padding_mode == "zeros" and isinstance(module.padding, tuple)
    return isinstance(module, nn.LayerNorm) and module.elementwise_affine


def conv_patches(x: Tensor, conv: nn.Conv2d) -> Tensor:
    """A k x k convolution's input as rows of patches, (examples x positions, channels x k x k), in the order
    of its weight's flattened axes: the convolution is then ``patches @ weight.reshape(out, -1).T``, and its
    refit is least squares over these rows, as for a linear layer. The rows keep ``x``'s dtype: a backbone's
    maps are large, and only the sampled rows (``sample_rows``) are worth the float64 copy."""
    if conv.kernel_size == (1, 1) and conv.stride == (1, 1):
        return _flat(x, True)
    cols = nn.functional.unfold(x, conv.kernel_size, dilation=conv.dilation, padding=conv.padding, stride=conv.stride)
    return cols.transpose(1, 2).reshape(-1, cols.shape[1])


def sample_rows(count: int, limit: int = MAX_ROWS) -> Tensor | None:
    """Which of ``count`` output positions a convolution's refit uses (None: all): an evenly spread,
    deterministic subset, so the source's recorded outputs and the small model's inputs are sampled alike."""
    if count <= limit:
        return None
    return torch.linspace(0, count - 1, limit).round().long()


def _sampled(rows: Tensor, index: Tensor | None) -> Tensor:
    return rows if index is None else rows[index]


def _flat(x: Tensor, conv: bool) -> Tensor:
    """Activations as (examples, features): channels last for convolutions."""
    if conv:
        x = x.movedim(1, -1)
    return x.reshape(-1, x.shape[-1])


def _rows(x: Tensor, conv: bool) -> Tensor:
    """``_flat`` in float64, the precision the statistics are summed in."""
    return _flat(x, conv).double()


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


# ------------------------------------------------------------------------------ recording and refitting
@dataclass
class LayerStats:
    """What recording keeps for one layer: statistics of its fitted rows and of its held-out rows
    (``refit.Moments``, they add over mini-batches and calls), and its weights as chosen (the prior)."""

    fit: Moments | None
    held: Moments | None
    prior: Tensor
    through: Tensor | None = None  # lifted statistics (``refit.group_moments``): the source layer's map to apply

    @property
    def rows(self) -> int:
        return (self.fit.n if self.fit is not None else 0) + (self.held.n if self.held is not None else 0)


def record(modules: list[nn.Module], stats: list[LayerStats | None], x: Tensor, ys: list[Tensor], held: Tensor,
           scales: list[float], through: list[Tensor | None] | None = None) -> list[LayerStats]:
    """Add one mini-batch to the statistics of layers that all read the input rows ``x``: each layer's
    target rows ``ys[i]`` (times ``scales[i]``); ``held`` marks the held-out rows. Layers reading one input
    (queries, keys and values; gate and up) share ``X^T X``, computed and later decomposed once. The first
    call also keeps each layer's weights as chosen. The layers are of one kind (all norms, or all linear
    maps with or without a bias). Where ``through[i]`` is given, ``ys[i]`` are the source layer's *inputs*
    and ``through[i]`` its map to the kept outputs (``lifted``): the statistics are lifted through it at
    the refit. Layers given the same tensor of targets share its products.

    Rows go to float64 a chunk at a time (``refit.row_chunks``), never as a whole copy."""
    norm, bias = isinstance(modules[0], nn.LayerNorm), getattr(modules[0], "bias", None) is not None
    through = through or [None] * len(modules)
    distinct = list({id(y): y for y in ys}.values())  # gate and up read one source input: its rows once
    where = [next(k for k, y in enumerate(distinct) if y is target) for target in ys]
    lifted = [t is not None for t in through]
    fits = [s.fit if s is not None else None for s in stats]
    outs = [s.held if s is not None else None for s in stats]
    for xc, hc, *chunks in row_chunks(x, held, *distinct):
        if norm:
            xc = (xc - xc.mean(-1, keepdim=True)) / torch.sqrt(xc.var(-1, unbiased=False, keepdim=True) + modules[0].eps)
        elif bias:
            xc = torch.cat([xc, torch.ones_like(xc[:, :1])], 1)
        for rows, totals in ((~hc, fits), (hc, outs)):
            if not bool(rows.any()):
                continue
            whole = bool(rows.all())
            xr = xc if whole else xc[rows]
            part = [c if whole else c[rows] for c in chunks]  # sliced once per distinct tensor
            yrs = [part[k] * scale if scale != 1.0 and not up else part[k]
                   for k, scale, up in zip(where, scales, lifted)]
            if norm:
                found = [channel_moments(xr, yr) for yr in yrs]
            else:
                found = group_moments(xr, yrs, lifted, held=totals is outs)
            totals[:] = add_shared(totals, found)
    return [LayerStats(fit, out, s.prior if s is not None else _prior(m, norm, bias), t)
            for m, s, fit, out, t in zip(modules, stats, fits, outs, through)]


def refit(module: nn.Module, stats: LayerStats, grid: tuple[float, ...], bases: Bases | None = None) -> Choice:
    """Solve for the layer from its statistics (the strength the held-out rows prefer) and write it;
    ``bases`` shares one decomposition among layers whose statistics share ``X^T X``."""
    fit, held = stats.fit, stats.held
    choice = choose_strength(fit if fit is not None else held, held if fit is not None else None, stats.prior, grid,
                             bases=bases, through=stats.through)
    _assign(module, choice.weight, isinstance(module, nn.LayerNorm), getattr(module, "bias", None) is not None)
    return choice


def _prior(module: nn.Module, norm: bool, bias: bool) -> Tensor:
    """The weights as chosen, in the refit's layout: (in [+1], out) in the layer's own dtype (the refit makes a
    block of columns float64 at a time: a whole float64 copy of an output layer over a 30,000-word vocabulary
    cost 125 MB more), or (channels, 2, 1) in float64 for a norm."""
    if norm:
        weight = module.weight.detach().double()
        shift = module.bias.detach().double() if bias else torch.zeros_like(weight)
        return torch.stack([weight, shift], -1).unsqueeze(-1)
    weight = module.weight.detach()
    w = weight.reshape(weight.shape[0], -1).T
    return torch.cat([w, module.bias.detach().to(w.dtype)[None]], 0) if bias else w.clone()


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
    ridge: float | None = None,
    grid: tuple[float, ...] = GRID,
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
    when the head width changes). Each refit is pulled towards the layer's weights as chosen
    (``refit.choose_strength``): with ``ridge`` None the strength is chosen from ``grid`` on every fourth
    calibration example, held out, else ``ridge`` is used as given. By default every layer with a resized
    parameter is refit; ``layers`` names them explicitly. ``budget`` (bytes) bounds the boundaries kept in
    memory; the rest go to disk.
    """
    batches = Batches.of(inputs)
    report = Compensation()
    fixed = None if ridge is None else (ridge,)
    holdout = fixed is None and batches.examples >= HOLD_OUT_EVERY
    report.held_out_examples = batches.examples // HOLD_OUT_EVERY if holdout else 0
    modules = dict(target.named_modules())
    active = _active(source, target, kept, source_name, layers, report)
    spill = Spill(budget) if batches.shared is None else batches.shared.spill  # one budget for every boundary
    walkers = Walker(target, batches, spill), Walker(source, batches, spill)  # in eval mode
    try:
        for walker in walkers:
            walker.trace()
        stages = _stages(walkers[0], active, report)
        stats: dict[str, LayerStats] = {}
        versions = _versions(walkers[0], active)
        ahead: list[Any] | None = None  # this stage's source captures, made in the stage before's pass
        for done, stage in enumerate(stages):
            ahead = _run_stage(walkers, stage, stats, kept, source_name, scale, report, holdout,
                               stages[done + 1:done + 3], ahead)
            if done == len(stages) - 1:
                _close(walkers)  # no pass is left: free the stored boundaries before the last refit
            _refit_stage(stage, stats, modules, walkers[0], fixed or grid, versions, report)
            if progress is not None:
                progress(done + 1, len(stages))
        for name, saved in versions.items():  # the model keeps each layer's last refit
            _use_version(modules[name], saved, len(walkers[0].calls[name]))
    finally:
        _close(walkers)
        if batches.shared is None:  # else the shared parts' owner closes it
            spill.close()
    return report


def _close(walkers: tuple[Walker, Walker]) -> None:
    for walker in walkers:
        walker.close()


def _refit_stage(stage: list[tuple[str, int]], stats: dict[str, LayerStats], modules: dict[str, nn.Module],
                 target: Walker, grid: tuple[float, ...], versions: dict[str, dict[int, list[Tensor]]],
                 report: Compensation) -> None:
    """Refit the stage's layers from their statistics; queries, keys and values share one decomposition."""
    bases = Bases()
    for name, k in stage:
        if name in stats and name not in report.skipped:
            _refit_call(modules[name], name, k, stats[name], grid, versions, report, bases)
        if k == len(target.calls.get(name, [])) - 1:
            stats.pop(name, None)  # its last refit is done: its statistics are not needed again


def _refit_call(module: nn.Module, name: str, k: int, stats: LayerStats, grid: tuple[float, ...],
                versions: dict[str, dict[int, list[Tensor]]], report: Compensation, bases: Bases) -> None:
    """Refit one layer after its call ``k`` and note it: its strength, held-out error, and for a layer
    called several times the weights call ``k`` runs with."""
    choice = refit(module, stats, grid, bases)
    report.strengths[name] = "inf" if math.isinf(choice.strength) else choice.strength
    if choice.errors:
        report.held_out[name] = round(min(choice.errors.values()), 6)
    if name in versions:
        versions[name][k] = [p.detach().clone() for p in module.parameters(recurse=False)]
    if name not in report.layers:
        report.layers.append(name)
    report.rows = max(report.rows, stats.rows)


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


@dataclass
class _Plan:
    """What one stage's pass reads: per target ``(layer, call)`` its source counterpart's call, the source
    output indices it keeps, the source map its statistics are lifted through (``_through``), what to capture
    of the source (``(name, call, "pre"|"post")``), the source block recorded on the way (``until``) and what the
    pass captures for the next stage (``ahead``)."""

    counterparts: dict[tuple[str, int], tuple[str, int]]
    index: dict[tuple[str, int], Tensor | None]
    through: dict[tuple[str, int], Tensor | None]
    want: dict[tuple[str, int], tuple[str, int, str]]
    until: tuple[str, Callable[[int, Any], None]] | None
    ahead: list[tuple[str, int, str]] = field(default_factory=list)  # the next stage's captures, made on the way
    narrow: dict[tuple[str, int, str], tuple[Tensor, int]] = field(default_factory=dict)  # ... kept in part


def _counterparts(source: Walker, stage: list[tuple[str, int]], source_name: Callable
                  ) -> dict[tuple[str, int], tuple[str, int]]:
    """The source call each ``(layer, call)`` of ``stage`` is fitted to (a layer called more often in the
    target than in the source is fitted to the source's last call); layers the source never runs are left out."""
    found = {}
    for name, k in stage:
        calls = source.calls.get(source_name(name), [])
        if calls:
            found[(name, k)] = (source_name(name), min(k, len(calls) - 1))
    return found


def _wants(walkers: tuple[Walker, Walker], counterparts: dict[tuple[str, int], tuple[str, int]], kept: Callable,
           scale: Callable) -> tuple[dict, dict, dict[tuple[str, int], tuple[str, int, str]]]:
    """Per ``(layer, call)``: the source outputs it keeps, the map its statistics are lifted through, and what
    of its counterpart to capture (its output, or its input when lifted)."""
    target, source = walkers
    index = {key: kept(key[0]) for key in counterparts}
    through = {key: _through(target.modules[key[0]], source.modules[src], index[key], scale(key[0]))
               for key, (src, _) in counterparts.items()}
    want = {key: (*src, "post" if through[key] is None else "pre") for key, src in counterparts.items()}
    return index, through, want


def _plan_stage(walkers: tuple[Walker, Walker], counterparts: dict[tuple[str, int], tuple[str, int]],
                kept: Callable, scale: Callable, following: list[list[tuple[str, int]]], source_name: Callable,
                given: bool) -> _Plan:
    """Prepare both walks for the stage and decide what its pass captures (see ``_Plan``); ``following`` are
    the next two stages, and ``given`` says the stage before's pass captured this one's source outputs."""
    target, source = walkers
    target.prepare(min(target.enter(n, k) for n, k in counterparts))
    index, through, want = _wants(walkers, counterparts, kept, scale)
    if given:  # the source does not run at all, and the captures it was given hold only the kept columns
        narrowed = _narrowed(target, index, through, want)
        index = {key: None if want[key] in narrowed else value for key, value in index.items()}
        return _Plan(counterparts, index, through, want, None)
    source.prepare(min(source.enter(*c) for c in counterparts.values()))
    calls = list(counterparts.values())
    upcoming = [_counterparts(source, stage, source_name) for stage in following]
    after = [source.enter(*c) for c in upcoming[0].values()] if upcoming else []
    closing, ahead, narrow = _closing_block(source, calls, after), [], {}
    together = calls + list(upcoming[0].values()) if upcoming else calls
    if LOOK_AHEAD and closing is None and upcoming and upcoming[0] and _block_of(source, together):
        # the next stage's source calls lie further on in this block: the source's weights never change, so
        # this pass goes on to them and keeps what the next stage needs, which then runs no source at all
        # (a decoder's source computed its attention twice, and its FFN's gate and up twice, per block)
        following_wants = _wants(walkers, upcoming[0], kept, scale)
        ahead = list(dict.fromkeys(following_wants[2].values()))
        narrow = _narrowed(target, *following_wants)
        later = [source.enter(*c) for c in upcoming[1].values()] if len(upcoming) > 1 else []
        closing = _closing_block(source, together, later)
    return _Plan(counterparts, index, through, want, (closing, source.recorder(closing)) if closing else None, ahead,
                 narrow)


def _narrowed(target: Walker, index: dict, through: dict, want: dict) -> dict[tuple[str, int, str], tuple[Tensor, int]]:
    """The captures of a stage of which it keeps only some columns (an output read by one layer, not lifted,
    with kept indices), with those indices and their axis: a pass that captures them for the stage ahead
    keeps only those columns (at a half-width cut, half a boundary per example less), and the stage selects
    nothing more. The stage before and the stage itself decide it alike, from the same ``_wants``."""
    readers: dict[tuple[str, int, str], list[tuple[str, int]]] = {}
    for key, capture in want.items():
        readers.setdefault(capture, []).append(key)
    found = {}
    for capture, keys in readers.items():
        key = keys[0]
        if len(keys) == 1 and capture[2] == "post" and through[key] is None and index[key] is not None:
            found[capture] = (index[key], 1 if isinstance(target.modules[key[0]], nn.Conv2d) else -1)
    return found


def _run_stage(walkers: tuple[Walker, Walker], stage: list[tuple[str, int]], stats: dict[str, LayerStats],
               kept: Callable, source_name: Callable, scale: Callable, report: Compensation, holdout: bool,
               following: list[list[tuple[str, int]]], given: list[Any] | None) -> list[Any] | None:
    """One pass over the mini-batches: the stage's inputs from the target, the kept outputs of their
    counterparts from the source (or their inputs, for lifted layers), recorded into ``stats``.
    ``following`` are the next two stages; ``given`` holds, per mini-batch, this stage's source captures when
    the stage before's pass made them (kept by the walk's spill). Returns the next stage's, when this pass
    made them."""
    target, source = walkers
    counterparts = _counterparts(source, stage, source_name)
    for name, _ in stage:
        if not any(key[0] == name for key in counterparts):
            report.skipped.setdefault(name, "not run on the calibration inputs, or called with keywords")
    if not counterparts:
        _release(source, given)
        return None
    plan = _plan_stage(walkers, counterparts, kept, scale, following, source_name, given is not None)
    made: list[Any] | None = [] if plan.ahead else None
    offset = 0  # examples before this mini-batch: every fourth example of the whole set is held out
    for i in range(len(target.batches)):
        xs = _capture(target, [(n, k, "pre") for n, k in counterparts], i)
        if given is not None:
            ys = source.spill.load(given[i])
        else:
            ys = _capture(source, list(dict.fromkeys([*plan.want.values(), *plan.ahead])), i, plan.until)
        if made is not None:
            made.append(source.spill.keep({key: _columns(ys[key], plan.narrow.get(key)) for key in plan.ahead
                                           if key in ys}))
        groups = _groups(target, plan, xs, ys, report, target.batches.sizes[i], offset if holdout else None)
        for x, held, members in groups.values():
            names_ = [member[0] for member in members]
            found = record([m[1] for m in members], [stats.get(n) for n in names_], x, [m[2] for m in members],
                           held, [scale(n) for n in names_], [m[3] for m in members])
            stats.update(zip(names_, found))
        offset += target.batches.sizes[i]
    _release(source, given)
    return made


def _columns(y: Tensor, narrow: tuple[Tensor, int] | None) -> Tensor:
    return y if narrow is None else y.index_select(narrow[1], narrow[0].to(y.device))


def _release(source: Walker, given: list[Any] | None) -> None:
    for item in given or []:
        source.spill.release(item)


def _groups(target: Walker, plan: _Plan, xs: dict, ys: dict, report: Compensation, size: int,
            offset: int | None) -> dict[tuple, tuple[Tensor, Tensor, list]]:
    """One mini-batch's rows for each stage layer, grouped by the input rows they share (their statistics
    share ``X^T X``): ``(x, held, [(name, module, targets, through)])``. ``offset`` is the first example's
    number when every fourth example is held out (None: none is)."""
    rows: dict[tuple, Tensor] = {}  # layers reading one tensor share its rows
    inputs: dict[int, Tensor] = {}  # ... and lifted layers reading one source input share its rows
    groups: dict[tuple, tuple[Tensor, Tensor, list]] = {}
    for (name, k) in plan.counterparts:
        module = target.modules[name]
        x, y = xs.get((name, k, "pre")), ys.get(plan.want[(name, k)])
        if x is None or y is None:
            report.skipped.setdefault(name, "not run on the calibration inputs, or called with keywords")
            continue
        conv = isinstance(module, nn.Conv2d)
        lifted = plan.through[(name, k)]
        if lifted is not None:  # the source layer's inputs (with a column of ones for its bias)
            if id(y) not in inputs:
                flat = _flat(y, False)
                extra = lifted.shape[0] - flat.shape[1]
                inputs[id(y)] = torch.cat([flat, torch.ones_like(flat[:, :1])], 1) if extra == 1 else flat
            y = inputs[id(y)]
        elif plan.index[(name, k)] is not None:
            y = _columns(y, (plan.index[(name, k)], 1 if conv else -1))
        if conv:  # rows are (example, output position): a k x k convolution is linear in its input patches
            shape = torch.Size([y.shape[0], y.shape[2] * y.shape[3], 1])
            layout = (id(x), module.kernel_size, module.stride, module.padding, module.dilation)
        else:
            shape, layout = x.shape, (id(x),)
        if layout not in rows:
            rows[layout] = conv_patches(x, module) if conv else _flat(x, False)
        x = rows[layout]
        sample = sample_rows(x.shape[0]) if conv else None  # a backbone's maps are large: spread positions
        x, y = _sampled(x, sample), y if lifted is not None else _sampled(_flat(y, conv), sample)
        width = module.normalized_shape[0] if isinstance(module, nn.LayerNorm) else module.weight.shape[0]
        given = lifted.shape[1] if lifted is not None else y.shape[1]
        if x.shape[0] != y.shape[0] or given != width or (lifted is not None and y.shape[1] != lifted.shape[0]):
            report.skipped[name] = f"{x.shape[0]}x{width} outputs, but the source gave {tuple(y.shape)}"
            continue
        held = _sampled(_held(shape, size, offset, target.batches.examples), sample) if offset is not None \
            else torch.zeros(x.shape[0], dtype=torch.bool)
        kind = (isinstance(module, nn.LayerNorm), getattr(module, "bias", None) is not None)
        groups.setdefault((id(x), kind), (x, held.to(x.device), []))[2].append((name, module, y, lifted))
    return groups


def _held(shape: torch.Size, size: int, offset: int, examples: int) -> Tensor:
    """``held_out_rows`` for a mini-batch of ``size`` examples starting at example ``offset``."""
    rows = math.prod(shape[:-1])
    if len(shape) >= 2 and shape[0] == size:
        held = (torch.arange(size) + offset) % HOLD_OUT_EVERY == HOLD_OUT_EVERY - 1
        return held.repeat_interleave(rows // size)
    return held_out_rows(shape, examples if size == examples else size)


def _capture(walker: Walker, calls: list[tuple[str, int, str]], i: int,
             until: tuple[str, Callable[[int, Any], None]] | None = None) -> dict[tuple[str, int, str], Tensor]:
    """First positional input (``pre``) or output (``post``) of each ``(module, call, kind)`` on mini-batch
    ``i``, stopping the forward once all are seen, or (``until``: a module and its recorder) once that module
    has returned and its output is recorded."""
    seen: dict[tuple[str, int, str], Tensor] = {}
    # one captured tensor per tensor of the forward: layers reading one input (queries, keys and values; gate
    # and up) then get the same object, which is what lets their statistics share X^T X and one
    # decomposition (``record``, ``Bases``). A fresh ``detach()`` per layer made every layer a group of its own:
    # a decoder block computed its queries' X^T X three times and decomposed it three times.
    same: dict[int, tuple[Tensor, Tensor]] = {}  # id -> (the forward's tensor, kept alive; its capture)

    def keep(value: Tensor, copy: bool) -> Tensor:
        if copy:
            return value.detach().clone()
        if id(value) not in same:
            same[id(value)] = (value, value.detach())
        return same[id(value)][1]

    def grab(key: tuple[str, int, str]) -> Callable:
        def fn(module: nn.Module, args: tuple, kwargs: dict, *output: Any) -> None:
            value = output[0] if output else (args[0] if args and isinstance(args[0], Tensor) else None)
            if isinstance(value, Tensor):  # a pass that goes on must keep what the forward changes in place later
                seen[key] = keep(value, key[0] in walker.written)
            if len(seen) == len(calls) and until is None:
                raise Stop
        return fn

    def done(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        assert until is not None
        until[1](i, output)
        raise Stop

    hooks = [(name, k, kind, grab((name, k, kind))) for name, k, kind in calls]
    walker.run(i, hooks + ([(until[0], 0, "post", done)] if until is not None else []),
               whole=until[0] if until is not None else None)
    return seen


def _block_of(source: Walker, calls: list[tuple[str, int]]) -> str | None:
    """The block of a stack (called once per forward) that all of ``calls`` lie in, if there is one."""
    blocks = {outer_block(name) for name, _ in calls}
    block = blocks.pop() if len(blocks) == 1 else None
    return block if block is not None and len(source.calls.get(block, [])) == 1 else None


def _closing_block(source: Walker, calls: list[tuple[str, int]], after: list[int]) -> str | None:
    """The block of a stack that all of a stage's source calls lie in, when no later stage calls into it
    (``after``: where the next stage's source calls begin): the source's weights never change, so its pass
    goes on to the block's end and records the block's output, and the next block's stage replays it instead
    of computing the whole block again (a decoder's FFN ran twice per block in the source)."""
    block = _block_of(source, calls)
    if block is None or block in source.stores:
        return None
    end = source.calls[block][0].exit
    if any(start < end for start in after):
        return None
    return block


def _through(module: nn.Module, counterpart: nn.Module, index: Tensor | None, scale: float) -> Tensor | None:
    """The source layer's map from its input to the kept outputs (``(in [+1], kept)``, float64, times
    ``scale``) when recording its inputs and lifting the statistics through it is cheaper than recording its
    outputs: a linear layer with more kept outputs than inputs (a vocabulary's output layer). None otherwise."""
    if not (isinstance(module, nn.Linear) and type(counterpart) is nn.Linear):
        return None
    inputs = module.in_features + (module.bias is not None)
    source = counterpart.in_features + (counterpart.bias is not None)
    if source * (inputs + source / HOLD_OUT_EVERY) >= inputs * module.out_features:
        return None
    # kept in the source's own dtype (a view where nothing is selected) and made float64 a block of columns at
    # a time by ``refit.lift``: a float64 copy of a 30,000-word output layer held 250 MB until its refit
    weight = counterpart.weight.detach()
    bias = counterpart.bias.detach().to(weight.dtype) if counterpart.bias is not None else None
    if index is not None:
        index = index.to(weight.device)
        weight, bias = weight[index], bias[index] if bias is not None else None
    through = weight.T if bias is None else torch.cat([weight.T, bias[None]], 0)
    return through if scale == 1.0 else through.double() * scale


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

