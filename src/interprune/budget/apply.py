"""Shrink to a budget: the search, the scoring shrinks of its top candidates and the final shrink, together."""

from __future__ import annotations

import copy
import os
from typing import Any

from .costs import LatencyCache
from .search import SearchResult, output_error, search
from .spec import Budget

__all__ = ["shrink_to_budget"]


def shrink_to_budget(source: str | os.PathLike, budgets: list[Budget], fixed: dict[str, Any] | None = None,
                     method: str = "select", *, calibration: str | os.PathLike | None = None,
                     calibration_size: int = 32, seed: int = 0, compensate: bool = False, rotate: bool = False,
                     layers: str = "first", dtype: Any = None, cache: LatencyCache | None = None,
                     **search_options: Any) -> tuple[Any, Any, SearchResult]:
    """The model, its transfer report and the search. With ``calibration`` the top candidates are each shrunk
    with ``method`` and its options and scored by their output error on the calibration examples (the best
    of them is the result, not shrunk again); without it the largest fitting candidate is shrunk."""
    from ..models import load_model
    from ..shrink import shrink

    options = dict(seed=seed, compensate=compensate, rotate=rotate, layers=layers)
    made: dict[str, tuple[Any, Any]] = {}
    score = None
    if calibration is not None:
        from ..calibration import calibration_inputs, model_processor

        model = load_model(source).float()
        inputs = calibration_inputs(calibration, model_processor(source), count=calibration_size, seed=seed)

        def score(overrides: dict[str, Any]) -> float:
            small, report = shrink(copy.deepcopy(model), overrides, method, calibration=inputs, **options)
            made[repr(sorted(overrides.items()))] = (small, report)
            return output_error(model, small, inputs)

    result = search(source, budgets, fixed=fixed, score=score, cache=cache, **search_options)
    key = repr(sorted(result.best.overrides.items()))
    if key in made:
        small, report = made[key]
        report.source = str(source)
        if calibration is not None and isinstance(report.preserved, dict):
            report.preserved["calibration"] = str(calibration)
        if dtype is not None:
            small = small.to(dtype)
    else:
        small, report = shrink(source, result.best.overrides, method, calibration=calibration,
                               calibration_size=calibration_size, dtype=dtype, **options)
    return small, report, result
