"""Shrink to a budget: the search, the scoring shrinks of its top candidates and the final shrink, together."""

from __future__ import annotations

import copy
import os
from typing import Any

from ..errors import InterpruneError
from .costs import LatencyCache
from .search import SearchResult, output_error, search
from .spec import Budget

__all__ = ["shrink_to_budget", "search_plan"]


def shrink_to_budget(source: str | os.PathLike, budgets: list[Budget], fixed: dict[str, Any] | None = None,
                     method: str = "select", *, calibration: str | os.PathLike | None = None,
                     calibration_size: int = 32, seed: int = 0, compensate: bool = False, rotate: bool | str = False,
                     layers: str = "first", dtype: Any = None, cache: LatencyCache | None = None,
                     engine: dict[str, Any] | None = None, **search_options: Any) -> tuple[Any, Any, SearchResult]:
    """The model, its transfer report and the search. With ``calibration`` the top candidates are each shrunk
    with ``method`` and its options and scored by their output error on the calibration examples (the best
    of them is the result, not shrunk again); without it the largest fitting candidate is shrunk. ``engine``
    goes to every ``shrink`` as it is (``calibration_batch``, ``device``, ``budget``, ``progress``)."""
    from ..backbones import convert, hf_equivalent
    from ..hf.models import load_config, load_model
    from ..weights.shrink import shrink

    options = dict(seed=seed, compensate=compensate, rotate=rotate, layers=layers, **(engine or {}))
    config = load_config(source)
    equivalent = hf_equivalent(config)
    if equivalent is not None and calibration is None:
        raise InterpruneError(f"the timm backbone {config.backbone_config.backbone} has no width or depth a config can "
                              f"set; the search converts it to its Hugging Face ResNet equivalent, whose stem is "
                              f"refit on data: give --calibration DATA (and a data-aware method or --compensate)")
    made: dict[str, tuple[Any, Any]] = {}
    score, model, converted = None, None, None
    if calibration is not None:
        from ..preserve.calibration import calibration_inputs
        from ..hf.processors import model_processor

        model = load_model(source).float()
        inputs = calibration_inputs(calibration, model_processor(source), count=calibration_size, seed=seed)
        if equivalent is not None:  # the source as it will be searched: its backbone a Hugging Face ResNet
            model, converted = convert(model, inputs, equivalent)

        def score(overrides: dict[str, Any]) -> float:
            small, report = shrink(copy.deepcopy(model), overrides, method, calibration=inputs, **options)
            made[repr(sorted(overrides.items()))] = (small, report)
            return output_error(model, small, inputs)

    result = search(source, budgets, fixed=fixed, score=score, cache=cache, config=equivalent, **search_options)
    if converted is not None:
        result.settings["converted_backbone"] = converted
    key = repr(sorted(result.best.overrides.items()))
    if key in made:
        small, report = made[key]
    else:
        small, report = shrink(model if model is not None else source, result.best.overrides, method,
                               calibration=inputs if calibration is not None else None, **options)
    report.source = str(source)
    if calibration is not None and isinstance(report.preserved, dict) and report.preserved:
        report.preserved["calibration"] = str(calibration)
    if dtype is not None:
        small = small.to(dtype)
    return small, report, result


def search_plan(source: str | os.PathLike, budgets: list[Budget], fixed: dict[str, Any] | None = None, *,
                cache: LatencyCache | None = None, **search_options: Any) -> tuple[SearchResult, Any, str | None]:
    """``interprune plan --budget``: the search (costs only, no weights read), the chosen target's plan, and
    a note when a timm backbone was searched as its Hugging Face equivalent."""
    from ..backbones import hf_equivalent
    from ..hf.models import build_model, load_config
    from ..plan import make_plan
    from ..hf.config import target_config

    config = load_config(source)
    equivalent = hf_equivalent(config)
    result = search(source, budgets, fixed=fixed, cache=cache, config=equivalent, **search_options)
    base = equivalent or config
    plan = make_plan(build_model(base, meta=True), build_model(target_config(base, result.best.overrides), meta=True))
    note = None if equivalent is None else (
        f"the timm backbone {config.backbone_config.backbone} is searched as its Hugging Face ResNet equivalent "
        f"('shrink --budget' converts it, refitting on --calibration data); the plan is from that equivalent")
    return result, plan, note
