"""Which tensor axes are the same dimension of a model: the plan every structure-aware method consumes.

A method that keeps *particular* residual channels, FFN units or heads must apply one choice to every
tensor axis that shares that dimension, and it must know what an axis is (a head, a position grid, a
token id). The plan is derived from the two models themselves, source and target, without running
them and without reading files:

* ``types``: the data (:class:`Kind`, :class:`Axis`, :class:`Grid`, :class:`Dimension`, :class:`Plan`);
* ``rules``: what a model cannot tell, as typed tables (layer types with their output and input axes,
  general rules, per-family rules);
* ``derive``: one function per rule, run in a stated order (``STEPS``): layers, attention, ids, sizes;
* ``choices``: the plan's own choices (``select``, ``first``) and how a choice indexes an axis.

Axes nothing explains are listed in ``Plan.unplanned`` and resized per tensor.
"""

from .choices import axis_index, default_choices, grouped_heads, output_index
from .derive import STEPS, make_plan
from .rules import FAMILY_RULES, MODULE_TYPES, RULES, STRUCTURED
from .types import Axis, Dimension, Grid, KeyValueHeads, Kind, Plan, plan_summary

__all__ = ["Axis", "Dimension", "Grid", "KeyValueHeads", "Kind", "Plan", "make_plan", "plan_summary",
           "default_choices", "axis_index", "output_index", "grouped_heads", "RULES", "FAMILY_RULES", "MODULE_TYPES", "STRUCTURED",
           "STEPS"]
