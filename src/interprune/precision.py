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
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["HALF", "compute_in_float32", "float32_copy", "to_float32", "Restore", "computes_in_float32"]

HALF = (torch.float16, torch.bfloat16)
_SAVED = "_interprune_half"  # module attribute: the half-precision tensors swapped out during a call


def _own(module: nn.Module) -> list[torch.Tensor]:
    return [*module.parameters(recurse=False), *module.buffers(recurse=False)]


def _widen(tensors: list[torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The half-precision ones among ``tensors`` made float32 in place; returns each with its half data."""
    saved = [(t, t.data) for t in tensors if t.dtype in HALF]
    for t, half in saved:
        t.data = half.float()
    return saved


def _up(module: nn.Module, args: Any) -> None:
    if "forward" in module.__dict__:  # replayed from a store: no computation, no copy
        return
    setattr(module, _SAVED, _widen(_own(module)))


def _down(module: nn.Module, args: Any, output: Any) -> None:
    for t, half in getattr(module, _SAVED, ()):
        t.data = half
    setattr(module, _SAVED, [])


class Restore:
    """Puts back the half-precision tensors of modules made float32 for the whole recipe."""

    def __init__(self, saved: list[tuple[torch.Tensor, torch.Tensor]]):
        self.saved = saved

    def remove(self) -> None:
        for t, half in self.saved:
            t.data = half
        self.saved = []


def compute_in_float32(model: nn.Module, outer: bool = True) -> list[Any]:
    """Make ``model``'s half-precision tensors compute in float32 (see the module doc); returns handles
    whose ``remove()`` undoes it. Modules inside a repeated stack (``layers.3.mlp``: nearly every weight of
    a large model) convert their own tensors while they run; with ``outer`` the few outside every stack
    (embeddings, heads, a detector's query embeddings, which its parent reads directly rather than by calling
    the module) are float32 for the whole recipe, else they too convert only while they run (a vocabulary's
    embeddings and output layer in float32 are twice their half size for the whole recipe). A model without
    half tensors is left alone."""
    from .walk import outer_block

    handles: list[Any] = []
    kept: list[tuple[torch.Tensor, torch.Tensor]] = []
    for name, module in model.named_modules():
        if not any(t.dtype in HALF for t in _own(module)):
            continue
        if outer and outer_block(name) is None:
            kept += _widen(_own(module))
            continue
        handles.append(module.register_forward_pre_hook(_up))
        handles.append(module.register_forward_hook(_down, always_call=True))
    return [*handles, Restore(kept)]


def to_float32(model: nn.Module) -> Restore:
    """Every half-precision tensor of ``model`` made float32 in place; ``remove()`` puts them back."""
    return Restore(_widen([*model.parameters(), *model.buffers()]))


def float32_copy(model: nn.Module, only: set[str] | None = None) -> nn.Module:
    """A float32 copy of ``model`` (its hooks stay and find nothing to convert): for code that changes
    weights in place, such as rotating heads, whose result must not be rounded to half precision.

    With ``only`` (tensor names), just those tensors are copied (in float32); every other one is *the same
    tensor* as the model's, so the copy costs what the rotation changes, not a whole model (DETR-R50's
    rotated copy held its 94 MB backbone twice), and parts shared with the source are seen to be shared
    (``prefix.Prefix.applies``) without comparing them."""
    if only is None:
        twin = copy.deepcopy(model)
        _widen([*twin.parameters(), *twin.buffers()])
        return twin
    named = [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]
    changed = {id(t) for n, t in named if n in only}
    twin = copy.deepcopy(model, {id(t): t for _, t in named if id(t) not in changed})
    state = twin.state_dict(keep_vars=True)
    _widen(list({id(state[n]): state[n] for n in only}.values()))
    return twin


class _HalfSeen(TorchDispatchMode):
    """Notes whether any operation gets a half-precision tensor: a model computing in float32 as it should
    never gives one to an operation (a parent reading a child's weight directly, or a model casting to its own
    ``dtype``, would, and type promotion may hide it from a plain run)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen = False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if not self.seen:
            found = [t.dtype for t in torch.utils._pytree.tree_leaves((args, kwargs, out))
                     if isinstance(t, torch.Tensor)]
            # the hooks' own widening (half in, float32 out) is exact, and a view computes nothing (what is
            # computed from it is seen in turn); anything else that touches a half tensor is not float32
            widening = func is torch.ops.aten._to_copy.default and found[-1] == torch.float32
            self.seen = not widening and not func.is_view and any(d in HALF for d in found)
        return out


@torch.no_grad()
def computes_in_float32(model: nn.Module, inputs: dict[str, Any]) -> bool:
    """Whether one forward of ``model`` on ``inputs`` runs without error and gives no operation a
    half-precision tensor: the probe that tells whether a model's hooks (``compute_in_float32``) suffice."""
    mode = _HalfSeen()
    try:
        with mode:
            model.eval()(**inputs)
    except RuntimeError:
        return False
    return not mode.seen
