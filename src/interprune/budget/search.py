"""Search the plan's dimensions for the target that fits a budget and keeps the most of the source.

As in Minitron's search: enumerate candidate widths and depths (``space``), cost each exactly (``costs``),
keep those that fit, and score the top-k that fit (the largest, by parameters) by how much of the source
they keep on calibration data: the relative error of the outputs after the data-aware shrink. Without
calibration data the largest candidate that fits wins, and the table says it was not scored.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import torch
from transformers import PretrainedConfig

from ..errors import InterpruneError
from ..errors import first_line
from .costs import LatencyCache, interleaved_latency, measure_latency, static_costs
from .space import candidate_overrides, grid, knobs_for
from .spec import Budget, format_value

__all__ = ["Candidate", "SearchResult", "search", "output_error"]


@dataclass
class Candidate:
    fractions: dict[str, float]
    overrides: dict[str, Any]
    params: int
    flops: int
    latency_ms: float | None = None
    fits: bool | None = None  # None: not known (latency not measured)
    error: float | None = None  # relative output error after the data-aware shrink (lower keeps more)
    chosen: bool = False
    checked: float | None = None  # latency relative to the source's, measured interleaved with it (the choice)

    def cost(self, kind: str) -> float | None:
        return {"params": self.params, "flops": self.flops, "latency": self.latency_ms}[kind]


@dataclass
class SearchResult:
    budgets: list[Budget]
    limits: dict[str, float]
    source: Candidate
    candidates: list[Candidate]
    best: Candidate
    fixed: dict[str, Any]
    scored: bool
    seconds: float
    measured: int = 0
    cache_hits: int = 0
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"budgets": [b.text for b in self.budgets], "limits": self.limits, "fixed": self.fixed,
                "scored": self.scored, "seconds": round(self.seconds, 2), "measured": self.measured,
                "cache_hits": self.cache_hits, "settings": self.settings, "source": asdict(self.source),
                "best": asdict(self.best), "candidates": [asdict(c) for c in self.candidates]}


def _enumerate(config: PretrainedConfig, fixed: dict[str, Any], inputs: dict, multiple: int,
               max_candidates: int) -> tuple[list[Candidate], list[str]]:
    """Every distinct buildable candidate with its exact parameters and FLOPs."""
    from ..hf.config import target_config

    knobs = knobs_for(config, fixed)
    seen, out, refused = set(), [], []
    for fractions in grid(knobs, max_candidates):
        overrides = {**fixed, **candidate_overrides(knobs, fractions, multiple)}
        key = repr(sorted(overrides.items()))
        if key in seen:
            continue
        seen.add(key)
        try:
            params, flops = static_costs(target_config(config, overrides), inputs)
        except Exception as err:  # a width the heads cannot split, a stage the backbone cannot build
            refused.append(f"{overrides}: {first_line(err)}")
            continue
        out.append(Candidate({k.name: f for (k, _), f in zip(knobs, fractions)}, overrides, params, flops))
    return out, refused


def _measure(candidates: list[Candidate], limit: float, measure: int, want: int,
             latency: Callable[[dict], float]) -> int:
    """Measure enough candidates to find the largest that fit. Latency is nearly monotone in FLOPs but far from
    proportional (small models pay fixed costs), so: order by FLOPs, bisect for the first that fits, then
    measure onwards until ``want`` fit (and the two just before, in case the order is not exact), at most
    ``measure`` in all besides the bisection."""
    order = sorted((c for c in candidates if c.fits is not False), key=lambda c: -c.flops)
    done = 0

    def timed(c: Candidate) -> bool:
        nonlocal done
        if c.latency_ms is None:
            c.latency_ms = latency(c.overrides)
            done += 1
        return c.latency_ms <= limit
    if not order or not timed(order[-1]):
        return done  # not even the smallest fits
    lo, hi = 0, len(order) - 1
    while lo < hi:
        mid = (lo + hi) // 2
        if timed(order[mid]):
            hi = mid
        else:
            lo = mid + 1
    extra, fit = 0, 0
    for c in order[max(0, lo - 2):]:
        if extra >= measure or fit >= want:
            break
        extra += c.latency_ms is None
        fit += timed(c)
    return done


def search(source: str | os.PathLike, budgets: list[Budget], *, fixed: dict[str, Any] | None = None,
           multiple: int = 8, top_k: int = 3, device: str = "cpu", threads: int | None = None, clock: str = "wall",
           image_size: int | None = None, max_candidates: int = 96, measure: int = 8,
           score: Callable[[dict[str, Any]], float] | None = None, cache: LatencyCache | None = None,
           config: PretrainedConfig | None = None) -> SearchResult:
    """The candidate that fits every budget and keeps the most of ``source`` (see the module docstring).

    ``fixed`` are ``--set`` overrides: kept in every candidate, their knobs not searched. ``score(overrides)``
    shrinks the source to a candidate with the data-aware method and returns its output error; without it the
    largest fitting candidate wins. ``config`` replaces the source's own (its Hugging Face backbone equivalent,
    see ``backbones``). Raises ``InterpruneError`` when no candidate fits, naming what is reachable.
    """
    from ..bench import dummy_inputs
    from ..hf.models import load_config

    start = time.perf_counter()
    fixed = dict(fixed or {})
    config = config if config is not None else load_config(source)
    inputs, _ = dummy_inputs(config, str(source), 1, image_size=image_size)
    params, flops = static_costs(config, inputs)
    origin = Candidate({}, {}, params, flops)
    candidates, _ = _enumerate(config, fixed, inputs, multiple, max_candidates)
    if not candidates:
        raise InterpruneError(f"no candidate target could be built with --set {fixed}; change the --set values")
    limits, static = {}, [b for b in budgets if b.kind != "latency"]
    for b in static:
        limits[b.kind] = min(limits.get(b.kind, float("inf")), b.limit(origin.cost(b.kind)))
    for c in candidates:
        c.fits = all(c.cost(k) <= v for k, v in limits.items()) and (None if len(static) < len(budgets) else True)
    measured = 0
    cache = cache if cache is not None else LatencyCache(None)
    if len(static) < len(budgets):
        from ..hf.config import target_config

        def latency(overrides: dict[str, Any]) -> float:
            return measure_latency(target_config(config, overrides), inputs, device=device, threads=threads,
                                   clock=clock, cache=cache)
        origin.latency_ms = latency({})
        limits["latency"] = min(b.limit(origin.latency_ms) for b in budgets if b.kind == "latency")
        measured = _measure(candidates, limits["latency"], measure, max(1, top_k), latency)
        for c in candidates:
            if c.fits is None and c.latency_ms is not None:
                c.fits = c.latency_ms <= limits["latency"]
    fitting = sorted((c for c in candidates if c.fits), key=lambda c: (-c.params, -c.flops))
    if not fitting:
        raise InterpruneError(_unreachable(config, budgets, limits, origin, candidates, fixed, inputs, multiple))
    check = _recheck(config, inputs, budgets, device, threads, clock) if len(static) < len(budgets) else None
    best = _chosen(fitting, top_k, score, check, budgets)
    best.chosen = True
    settings = {"multiple": multiple, "top_k": top_k, "device": device, "threads": threads, "clock": clock,
                "input": {k: list(v.shape) for k, v in inputs.items()}, "max_candidates": max_candidates}
    return SearchResult(list(budgets), limits, origin, candidates, best, fixed, score is not None,
                        time.perf_counter() - start, measured, cache.hits, settings)


def _recheck(config: PretrainedConfig, inputs: dict, budgets: list[Budget], device: str, threads: int | None,
             clock: str) -> Callable[[Candidate], bool]:
    """A latency budget's last word: the choice, measured again interleaved with the source, must still fit."""
    from ..hf.config import target_config

    def check(c: Candidate) -> bool:
        full, small = interleaved_latency([config, target_config(config, c.overrides)], inputs, device=device,
                                          threads=threads, clock=clock)
        c.checked = small / full
        return all(c.checked <= b.value if b.relative else small <= b.value for b in budgets if b.kind == "latency")
    return check


def _chosen(fitting: list[Candidate], top_k: int, score: Callable[[dict[str, Any]], float] | None,
            check: Callable[[Candidate], bool] | None, budgets: list[Budget]) -> Candidate:
    """The best of the top ``top_k`` that fit; a choice the re-check refuses (a noisy first measurement)
    gives its place to the next candidate that fits."""
    while True:
        best = _best(fitting[: max(1, top_k)], score)
        if check is None or check(best):
            return best
        best.fits = False
        fitting.remove(best)
        if not fitting:
            raise InterpruneError(f"no candidate meets --budget {' '.join(b.text for b in budgets)} when measured "
                                  f"against the source: the closest measured {best.checked:.2f}x")


def _best(top: list[Candidate], score: Callable[[dict[str, Any]], float] | None) -> Candidate:
    """The candidate with the least output error after the shrink (each scored once), else the largest."""
    if score is None:
        return top[0]
    for c in top:
        if c.error is None:
            c.error = float(score(c.overrides))
    return min(top, key=lambda c: c.error)


def _unreachable(config, budgets, limits, origin, candidates, fixed, inputs, multiple) -> str:
    """One line: which budget no candidate meets and the smallest value that is reachable (and, when ``--set``
    is what stands in the way, that it contradicts the budget)."""
    for b in budgets:
        costs = [c.cost(b.kind) for c in candidates if c.cost(b.kind) is not None]
        if costs and min(costs) <= limits[b.kind]:
            continue
        least, base = min(costs), origin.cost(b.kind)
        what = (f"the smallest reachable is {format_value(b.kind, least)} ({least / base:.2f}x the source's "
                f"{format_value(b.kind, base)})")
        if fixed and b.kind != "latency":
            from ..hf.config import target_config

            knobs = knobs_for(config, {})
            smallest = candidate_overrides(knobs, tuple(min(k.options) for k, _ in knobs), multiple)
            free = static_costs(target_config(config, smallest), inputs)[0 if b.kind == "params" else 1]
            if free <= limits[b.kind]:
                sets = " ".join(f"--set {k}={v}" for k, v in fixed.items())
                return f"{sets} contradicts --budget {b.text}: with it {what}; without it the budget can be met"
        return f"no candidate meets --budget {b.text} ({format_value(b.kind, limits[b.kind])}); {what}"
    return "no single candidate meets all the budgets at once; loosen one of them"


@torch.no_grad()
def output_error(source: torch.nn.Module, target: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> float:
    """Relative error of ``target``'s outputs against ``source``'s on ``inputs``, averaged over the outputs
    both give with one shape (a detector's class logits and boxes; a backbone's last hidden state)."""
    a, b = source.eval()(**inputs), target.eval()(**inputs)
    errors = []
    for key in ("logits", "pred_boxes", "last_hidden_state", "pooler_output"):
        x, y = getattr(a, key, None), getattr(b, key, None)
        if isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor) and x.shape == y.shape:
            errors.append(float((y.float() - x.float()).norm() / x.float().norm().clamp_min(1e-12)))
    if not errors:
        raise InterpruneError("the candidates' outputs cannot be compared with the source's (no output of one shape)")
    return sum(errors) / len(errors)
