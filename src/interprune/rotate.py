"""Rotate each attention head's width to its principal directions before cutting it (SliceGPT-style).

Inside one attention head, queries and keys only meet in a dot product, and values only reach the
output projection linearly. An orthogonal rotation ``R`` of a head's width, applied to every layer that
writes it (``W -> R^T W``, ``b -> R^T b``) and undone in every layer that reads it (``W -> W R``), so
leaves the model's function exactly unchanged, yet lets the kept channels carry as much as possible:
with ``R`` the eigenvectors of the head's activation covariance on calibration data, the first
channels hold the most energy, and keeping them drops the least. Only dimensions of kind
``head_dim`` rotate: an FFN unit passes a non-linearity and the residual stream a layer norm (and, in
the DETR family, a fixed sine embedding), where a rotation would change the function.
"""

from __future__ import annotations

import copy
from typing import Any, Callable

import torch
from torch import Tensor, nn

__all__ = ["rotate_heads"]

Batch = dict[str, Any]


def _writers(dim: Any) -> list[Any]:
    return [a for a in dim.axes if a.axis == 0]


@torch.no_grad()
def _head_covariances(model: nn.Module, dims: list[Any], inputs: Batch,
                      rename: Callable[[str], str]) -> dict[str, Tensor]:
    """Per dimension, ``(parts, width, width)``: each head's output covariance, summed over the
    writing layers with each normalised to unit trace (so every writer counts alike)."""
    owners = {rename(a.tensor.rpartition(".")[0]) for d in dims for a in _writers(d) if a.tensor.endswith(".weight")}
    grams: dict[str, Tensor] = {}

    def hook(name: str) -> Callable:
        def fn(module: nn.Module, args: tuple, output: Tensor) -> None:
            y = output.detach().double()
            grams[name] = grams.get(name, 0) + torch.einsum("...i,...j->ij", y, y)
        return fn

    named = dict(model.named_modules())
    handles = [named[n].register_forward_hook(hook(n)) for n in owners if isinstance(named.get(n), nn.Linear)]
    try:
        model.eval()(**inputs)
    finally:
        for h in handles:
            h.remove()
    out = {}
    for dim in dims:
        total = torch.zeros(_writers(dim)[0].parts, dim.source, dim.source, dtype=torch.float64)
        for axis in _writers(dim):
            owner = rename(axis.tensor.rpartition(".")[0])
            if owner not in grams or not axis.tensor.endswith(".weight"):
                continue
            gram = grams[owner]
            blocks = torch.stack([gram[p * dim.source:(p + 1) * dim.source, p * dim.source:(p + 1) * dim.source]
                                  for p in range(axis.parts)])
            total += blocks / blocks.diagonal(dim1=1, dim2=2).sum(-1).clamp_min(1e-12)[:, None, None]
        out[dim.name] = total
    return out


@torch.no_grad()
def rotate_heads(source: nn.Module, plan: Any, inputs: Batch,
                 rename: Callable[[str], str] = lambda name: name) -> tuple[nn.Module, dict[str, Tensor]]:
    """A copy of ``source`` computing the same function with every shrunk ``head_dim`` dimension rotated
    to its principal directions, and the choices that keep the leading ones (``{name: arange(target)}``).
    ``rename`` maps the plan's (target) tensor names to the source's when layers were dropped."""
    dims = [d for d in plan.dimensions if d.kind == "head_dim" and d.target < d.source
            and all(a.group == 1 for a in d.axes) and _writers(d)]
    rotated = copy.deepcopy(source)
    if not dims:
        return rotated, {}
    covariances = _head_covariances(source, dims, inputs, rename)
    state = rotated.state_dict(keep_vars=True)
    choices = {}
    for dim in dims:
        _, vectors = torch.linalg.eigh(covariances[dim.name])  # ascending eigenvalues
        rotation = vectors.flip(-1)  # (parts, width, width): columns by falling energy
        for axis in dim.axes:
            slot = state[rename(axis.tensor)]
            w = slot.data.double().movedim(axis.axis, 0)
            blocks = w.reshape(axis.parts, dim.source, -1)
            # a writer's outputs become R^T y; a reader's columns become W R, which in this layout (the
            # axis moved to the front) is the same product R^T (W^T)
            blocks = torch.einsum("pij,pik->pjk", rotation, blocks)
            slot.data.copy_(blocks.reshape(w.shape).movedim(0, axis.axis).to(slot.dtype))
        choices[dim.name] = torch.arange(dim.target)
    return rotated, choices
