"""interprune: make a smaller (or larger) variant of a pretrained model without training from scratch."""

from .errors import InterpruneError
from .plan import Plan, make_plan
from .resample import METHODS, resample, select_indices
from .shrink import load_model, save, shrink
from .transfer import TransferReport, transfer

__all__ = ["METHODS", "InterpruneError", "Plan", "TransferReport", "load_model", "make_plan", "resample", "save",
           "select_indices", "shrink", "transfer"]
__version__ = "0.1.0"
