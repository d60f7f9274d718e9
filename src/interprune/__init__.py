"""interprune: make a smaller (or larger) variant of a pretrained model without training from scratch.

The package face is light: ``import interprune`` loads no torch, so ``interprune --help`` and errors about
arguments answer at once. Each public name is imported from where it lives on first use (PEP 562).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .errors import InterpruneError

if TYPE_CHECKING:
    from .hf.models import load_model, save
    from .plan import Plan, make_plan
    from .methods import METHODS
    from .weights.resample import resample, select_indices
    from .weights.shrink import shrink
    from .weights.transfer import TransferReport, transfer

# public name -> the module it lives in
_HOMES = {
    "METHODS": "methods", "resample": "weights.resample", "select_indices": "weights.resample",
    "TransferReport": "weights.transfer", "transfer": "weights.transfer",
    "shrink": "weights.shrink", "load_model": "hf.models", "save": "hf.models",
    "Plan": "plan", "make_plan": "plan",
}

__all__ = ["METHODS", "InterpruneError", "Plan", "TransferReport", "load_model", "make_plan", "resample", "save",
           "select_indices", "shrink", "transfer"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'interprune' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{home}", __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
