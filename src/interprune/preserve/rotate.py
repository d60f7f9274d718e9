"""Rotate each attention head's width to its principal directions before cutting it (SliceGPT-style).

Inside one attention head, queries and keys only meet in a dot product, and values only reach the
output projection linearly. An orthogonal rotation ``R`` of a head's width, applied to every layer that
writes it (``W -> R^T W``, ``b -> R^T b``) and undone in every layer that reads it (``W -> W R``),
leaves the model's function exactly unchanged, yet lets the kept channels carry as much as possible:
with ``R`` the eigenvectors of the head's activation covariance on calibration data, the leading
channels hold the most energy, and keeping them drops the least. Queries and keys share one rotation,
values and the output projection another (the plan gives them one ``head_dim`` dimension, and both
keep their leading channels). Only ``head_dim`` dimensions rotate: an FFN unit passes a
non-linearity and the residual stream a layer norm (and, in the DETR family, a fixed sine embedding),
where a rotation would change the function.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor, nn

from ..plan import RULES
from ..plan.fused import PART_MARK
from ..precision import float32_copy
from ..walk import hooked_pass

__all__ = ["rotate_heads", "query_key_axes"]

Batch = dict[str, Any]


def query_key_axes(dim: Any) -> tuple[list[Any], list[Any]]:
    """Split a head-width dimension's axes into queries/keys and values/output, by projection name
    (the plan's ``RULES``); readers (the output projection's input axis) belong to the values."""
    qk, vo = [], []
    for axis in dim.axes:
        module = axis.tensor.rpartition(".")[0].rpartition(".")[2]
        (qk if axis.axis == 0 and RULES.is_query_or_key(module) else vo).append(axis)
    return qk, vo


def _rotatable(dim: Any) -> bool:
    """Plain per-head axes only: one part per head everywhere (a fused q/k/v axis has three times more),
    and no position encoding inside the head (rotary embeddings turn fixed channel pairs, which a rotation
    of the width would mix)."""
    parts = {a.parts for a in dim.axes}
    qk, vo = query_key_axes(dim)
    fused = any(PART_MARK in a.tensor for a in dim.axes)  # parts of a fused tensor are not rotated in place
    return (dim.kind == "head_dim" and dim.target < dim.source and len(parts) == 1 and dim.aligned is None
            and not fused
            and all(a.group == 1 for a in dim.axes) and bool(qk) and bool(vo))


@torch.no_grad()
def _covariances(model: nn.Module, groups: dict[tuple[str, str], list[Any]], units: dict[str, int], inputs: Batch,
                 rename: Callable[[str], str]) -> dict[tuple[str, str], Tensor]:
    """Per (dimension, group): ``(heads, width, width)``, each head's output covariance summed over the
    group's writing layers, each normalised to unit trace so every writer counts alike."""
    owners = {rename(a.tensor.rpartition(".")[0]) for axes in groups.values() for a in axes
              if a.axis == 0 and a.tensor.endswith(".weight")}
    grams: dict[str, Tensor] = {}

    def hook(name: str) -> Callable:
        def fn(module: nn.Module, args: tuple, output: Tensor) -> None:
            y = output.detach().reshape(-1, output.shape[-1]).double()
            grams[name] = grams.get(name, 0) + y.T @ y
        return fn

    named = dict(model.named_modules())
    hooked_pass(model, inputs, [(named[n], hook(n)) for n in owners if isinstance(named.get(n), nn.Linear)])
    out = {}
    for key, axes in groups.items():
        width = units[key[0]]
        device = next(iter(grams.values())).device if grams else None
        total = torch.zeros(axes[0].parts, width, width, dtype=torch.float64, device=device)
        for axis in axes:
            owner = rename(axis.tensor.rpartition(".")[0])
            if owner not in grams or axis.axis != 0 or not axis.tensor.endswith(".weight"):
                continue
            gram = grams[owner]
            blocks = torch.stack([gram[p * width:(p + 1) * width, p * width:(p + 1) * width]
                                  for p in range(axis.parts)])
            total += blocks / blocks.diagonal(dim1=1, dim2=2).sum(-1).clamp_min(1e-12)[:, None, None]
        out[key] = total
    return out


def _signed(vectors: Tensor) -> Tensor:
    """Eigenvectors with a fixed sign (largest component positive): ``eigh`` may return either sign,
    and a covariance summed in another order (other mini-batches) must give the same model."""
    largest = vectors.abs().argmax(dim=-2, keepdim=True)
    signs = torch.sign(vectors.gather(-2, largest))
    return vectors * torch.where(signs == 0, torch.ones_like(signs), signs)


@torch.no_grad()
def rotate_heads(source: nn.Module, plan: Any, inputs: Batch,
                 rename: Callable[[str], str] = lambda name: name) -> tuple[nn.Module, dict[str, Tensor]]:
    """A copy of ``source`` computing the same function with every shrunk ``head_dim`` dimension rotated
    to its principal directions, and the choices that keep the leading channels (``{name: arange(target)}``).
    ``rename`` maps the plan's (target) tensor names to the source's when layers were dropped."""
    dims = [d for d in plan.dimensions if _rotatable(d)]
    if not dims:  # nothing to turn (rotary heads, no head cut): the source itself, not a copy of it
        return source, {}
    groups = {}
    for dim in dims:
        qk, vo = query_key_axes(dim)
        groups[(dim.name, "qk")], groups[(dim.name, "vo")] = qk, vo
    # rotated in float32 (a half-precision source's rotation is not rounded); the tensors it leaves alone
    # are the source's own
    rotated = float32_copy(source, only={rename(axis.tensor) for axes in groups.values() for axis in axes})
    covariances = _covariances(source, groups, {d.name: d.source for d in dims}, inputs, rename)
    state = rotated.state_dict(keep_vars=True)
    for (name, _), axes in groups.items():
        _, vectors = torch.linalg.eigh(covariances[(name, _)])  # ascending eigenvalues
        rotation = _signed(vectors.flip(-1))  # (heads, width, width): columns by falling energy
        for axis in axes:
            slot = state[rename(axis.tensor)]
            w = slot.data.double().movedim(axis.axis, 0)
            blocks = w.reshape(axis.parts, rotation.shape[1], -1)
            # a writer's outputs become R^T y; a reader's columns become W R, which in this layout (the
            # axis moved to the front) is the same product R^T (W^T)
            blocks = torch.einsum("pij,pik->pjk", rotation, blocks)
            slot.data.copy_(blocks.reshape(w.shape).movedim(0, axis.axis).to(slot.dtype))
    return rotated, {dim.name: torch.arange(dim.target) for dim in dims}
