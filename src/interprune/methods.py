"""Every shrink method, one record each: the vocabulary that ``interprune methods``, the CLI and the sweep read.

A method's *kind* says how it fills a resized tensor:

* ``per-tensor``: each tensor is resized on its own (the paper's interpolations, ``random``);
* ``structured``: one choice of units per plan dimension, from positions alone (``select``, ``first``);
* ``data-aware``: one choice per plan dimension from what the source holds, its weights or its activations
  on calibration data (``magnitude``, ``calibrated``); these run the recipe in ``preserve.recipe``.

Structured and data-aware methods take the options ``layers``, ``rotate`` and ``compensate``; options that
read activations need calibration data, and so does ``calibrated`` itself. This module imports no torch, so
listing and checking methods answers at once. A per-tensor method's function is registered by name in
``weights.resample``.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from .errors import InterpruneError

__all__ = ["Kind", "Method", "METHODS", "LAYER_CHOICES", "names", "chooses_units", "check_options", "check_recipe"]


class Kind(str, Enum):
    PER_TENSOR = "per-tensor"
    STRUCTURED = "structured"
    DATA_AWARE = "data-aware"


@dataclass(frozen=True)
class Method:
    """One way of filling a resized tensor from its larger (or smaller) counterpart."""

    name: str
    kind: Kind
    description: str
    calibration: bool = False  # reads calibration data itself (options may read it for any method that chooses)
    paper: bool = False  # one of the four methods of Samar & Tavassoli


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("nearest-exact", Kind.PER_TENSOR, "nearest neighbour at pixel centres (torch 'nearest-exact'); paper",
           paper=True),
    Method("area", Kind.PER_TENSOR, "area interpolation: adaptive average over each target cell (torch 'area'); paper",
           paper=True),
    Method("avg-pool", Kind.PER_TENSOR, "average pooling with equal windows tiling the axis; paper", paper=True),
    Method("max-pool", Kind.PER_TENSOR, "max pooling with equal windows tiling the axis; paper", paper=True),
    Method("nearest", Kind.PER_TENSOR, "nearest neighbour, left-aligned (torch 'nearest')"),
    Method("linear", Kind.PER_TENSOR, "linear interpolation along each changed axis (bi/trilinear for 2/3 axes)"),
    Method("select", Kind.STRUCTURED,
           "uniform element selection, same indices for every tensor of a dimension (Xu et al. 2024)"),
    Method("first", Kind.STRUCTURED, "keep the leading slice; growing pads with the target's own initial values"),
    Method("random", Kind.PER_TENSOR, "the target's own initialisation for every resized tensor (baseline)"),
    Method("magnitude", Kind.DATA_AWARE,
           "keep the units with the largest weight norms, one choice per dimension (no data)"),
    Method("calibrated", Kind.DATA_AWARE,
           "keep the units with the most activation on --calibration data, one choice per dimension",
           calibration=True),
)}

# which source layers a shallower stack keeps (``preserve.importance.choose_layers``)
LAYER_CHOICES = ("first", "uniform", "importance")
# what ``rotate`` turns to its principal directions: attention heads' widths (``True`` says the same), a
# pre-norm model's residual stream, or both (``preserve.rotate``, ``preserve.residual``)
ROTATIONS = ("heads", "residual", "both")


def rotation_parts(rotate: bool | str) -> tuple[bool, bool]:
    """``(heads, residual)``: what a ``rotate`` option value turns."""
    if rotate is True:
        return True, False
    if rotate is False or rotate is None:
        return False, False
    if rotate not in ROTATIONS:
        raise InterpruneError(f"unknown rotation {rotate!r}; use one of {', '.join(ROTATIONS)}")
    return rotate in ("heads", "both"), rotate in ("residual", "both")


def names(*kinds: Kind) -> tuple[str, ...]:
    """The methods of the given kinds, kind by kind, each in the registry's order."""
    return tuple(m.name for kind in kinds for m in METHODS.values() if m.kind is kind)


def chooses_units(method: str) -> bool:
    """Whether the method makes one choice per plan dimension (so it takes layers, rotate, compensate)."""
    return method in METHODS and METHODS[method].kind is not Kind.PER_TENSOR


def check_options(method: str, *, calibration: bool, compensate: bool, layers: str, rotate: bool | str,
                  words: str = "cli") -> bool:
    """Reject a method with inconsistent options before any work, naming the fix; return whether the
    data-aware recipe (``preserve.recipe.fill``) runs. ``words`` is ``cli`` (flags) or ``yaml`` (sweep keys)."""
    recipe = method in names(Kind.DATA_AWARE) or compensate or rotate or layers != "first"
    if calibration and not recipe:
        if words == "yaml":
            raise InterpruneError(f"calibration is read only by init 'calibrated', compensate, rotate and layers: "
                                  f"importance; init {method!r} alone would ignore it: add one of them or drop it")
        raise InterpruneError(f"--calibration is read only by 'calibrated', --compensate, --rotate and --layers "
                              f"importance; method {method!r} alone would ignore it: add one of them or drop it")
    if not recipe:
        return False
    choosers = ", ".join(names(Kind.DATA_AWARE, Kind.STRUCTURED))
    if words == "yaml" and not chooses_units(method):
        raise InterpruneError(f"init {method!r} takes no compensate/rotate/layers options; use one of {choosers}")
    try:
        check_recipe(method, calibration=calibration, compensate=compensate, layers=layers, rotate=rotate)
    except InterpruneError as err:
        if words != "yaml":
            raise
        message = str(err)  # the same check in the YAML's words
        for flag, key in (("--calibration DATA", "calibration: DATA"), ("--method ", "init: "),
                          ("--compensate", "compensate: true"), ("--rotate", "rotate: true"), ("--layers ", "layers: ")):
            message = message.replace(flag, key)
        raise InterpruneError(message) from None
    return True


def check_recipe(method: str, *, calibration: bool, compensate: bool, layers: str, rotate: bool | str) -> None:
    """The options of the data-aware recipe: a method that chooses units, calibration data where needed."""
    rotation_parts(rotate)
    if layers not in LAYER_CHOICES:
        raise InterpruneError(f"unknown layer choice {layers!r}; use one of {', '.join(LAYER_CHOICES)}")
    if not chooses_units(method):
        raise InterpruneError(f"method {method!r} resamples each tensor on its own, so it cannot take layer, "
                              f"rotation or compensation options; use one of "
                              f"{', '.join(names(Kind.DATA_AWARE, Kind.STRUCTURED))}")
    needs = [flag for flag, on in (("--compensate", compensate), ("--rotate", rotate),
                                   ("--layers importance", layers == "importance"),
                                   ("--method calibrated", METHODS[method].calibration)) if on]
    if needs and not calibration:
        raise InterpruneError(f"{', '.join(needs)} needs calibration inputs; pass --calibration DATA (a dataset "
                              f"or image folder, or a text file with one example per line)")
