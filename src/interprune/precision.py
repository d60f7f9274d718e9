"""A half-precision model that computes in float32 one module at a time.

The data-aware recipe computes in float32, and it used to convert a bfloat16 or float16 source to float32
whole: twice the checkpoint's size in memory for the source alone (1 GB for a 251M decoder, 28 GB for a 7B
one). ``compute_in_float32`` keeps every tensor in its half precision and gives each module float32 copies
of its *own* parameters and buffers only while it runs: a forward pre-hook swaps them in, a forward hook
that runs whatever happens (``always_call``: the sequential engine stops forwards with an exception) puts
the half-precision tensors back. The function is the float32 model's exactly (a bfloat16 value is a
float32 value), and at any moment only the running modules are in float32.

A module the walk replays from a store (its ``forward`` patched on the instance) computes nothing and is
left as it is. Code that reads weights rather than running them (scores, transfer, refits) reads the half
tensors and converts what it uses.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

__all__ = ["HALF", "compute_in_float32", "float32_copy"]

HALF = (torch.float16, torch.bfloat16)
_SAVED = "_interprune_half"  # module attribute: the half-precision tensors swapped out during a call


def _own(module: nn.Module) -> list[torch.Tensor]:
    return [*module.parameters(recurse=False), *module.buffers(recurse=False)]


def _up(module: nn.Module, args: Any) -> None:
    if "forward" in module.__dict__:  # replayed from a store: no computation, no copy
        return
    saved = [(t, t.data) for t in _own(module) if t.dtype in HALF]
    for t, half in saved:
        t.data = half.float()
    setattr(module, _SAVED, saved)


def _down(module: nn.Module, args: Any, output: Any) -> None:
    for t, half in getattr(module, _SAVED, ()):
        t.data = half
    setattr(module, _SAVED, [])


def compute_in_float32(model: nn.Module) -> list[Any]:
    """Make every module of ``model`` that holds half-precision tensors compute with float32 copies of them
    (see the module doc); returns the hook handles (``handle.remove()`` undoes it). A model without half
    tensors is left alone."""
    handles: list[Any] = []
    for module in model.modules():
        if any(t.dtype in HALF for t in _own(module)):
            handles.append(module.register_forward_pre_hook(_up))
            handles.append(module.register_forward_hook(_down, always_call=True))
    return handles


def float32_copy(model: nn.Module) -> nn.Module:
    """A float32 copy of ``model`` (its hooks stay and find nothing to convert): for code that changes
    weights in place, such as rotating heads, whose result must not be rounded to half precision."""
    twin = copy.deepcopy(model)
    for t in [*twin.parameters(), *twin.buffers()]:
        if t.dtype in HALF:
            t.data = t.data.float()
    return twin
