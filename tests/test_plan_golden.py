"""Golden files of ``Plan.describe()`` for every family the tests build: any change to the plan's rules
shows as a diff of these files. ``INTERPRUNE_UPDATE_GOLDEN=1 pytest tests/test_plan_golden.py`` rewrites
them after a deliberate change (review the diff)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from interprune.weights.shrink import plan_for

from .families import FAMILIES

GOLDEN = Path(__file__).parent / "golden" / "plan"
CASES = ("half", "shallow", "grow")


def describe(family: str, case: str) -> str:
    """The plan of one family's target, from shapes only (both models on the meta device)."""
    config_cls, fields, model_cls, _, targets = FAMILIES[family][:5]
    with torch.device("meta"):
        source = model_cls(config_cls(**fields))
    return plan_for(source, targets[CASES.index(case)]).describe() + "\n"


@pytest.mark.parametrize("family", list(FAMILIES))
def test_plan_matches_its_golden_file(family):
    path = GOLDEN / f"{family}.txt"
    text = "".join(f"## {case}\n{describe(family, case)}" for case in CASES)
    if os.environ.get("INTERPRUNE_UPDATE_GOLDEN"):
        path.write_text(text)
    assert path.exists(), f"no golden file {path.name}; run with INTERPRUNE_UPDATE_GOLDEN=1"
    assert text == path.read_text(), f"the plan of {family} changed; diff {path} (INTERPRUNE_UPDATE_GOLDEN=1 rewrites)"
