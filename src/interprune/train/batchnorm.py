"""Live batch norm for backbones trained from scratch.

DETR replaces every BatchNorm2d of its backbone by a frozen copy (statistics and affine as buffers),
which suits an ImageNet-pretrained backbone but leaves a from-scratch backbone with no normalisation
at all: it then barely learns. ``thaw`` swaps the frozen layers for ordinary BatchNorm2d for the
duration of training and ``freeze`` writes what they learned back into frozen layers, so the saved
model is a stock model again.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["thaw", "freeze"]


def _replace(model: nn.Module, make) -> int:
    count = 0
    for parent in model.modules():
        for name, child in list(parent.named_children()):
            new = make(child)
            if new is not None:
                setattr(parent, name, new)
                count += 1
    return count


@torch.no_grad()
def thaw(model: nn.Module) -> int:
    """Replace frozen batch norms by trainable ones with the same values; returns how many."""

    def make(child: nn.Module) -> nn.Module | None:
        if not type(child).__name__.endswith("FrozenBatchNorm2d"):
            return None
        live = nn.BatchNorm2d(child.weight.numel(), eps=getattr(child, "eps", 1e-5))
        for key in ("weight", "bias", "running_mean", "running_var"):
            getattr(live, key).copy_(getattr(child, key))
        live.frozen_type = type(child)
        return live.train(child.training).to(child.weight.device)

    return _replace(model, make)


@torch.no_grad()
def freeze(model: nn.Module) -> int:
    """Turn the batch norms made by :func:`thaw` back into frozen ones holding the learned values."""

    def make(child: nn.Module) -> nn.Module | None:
        kind = getattr(child, "frozen_type", None)
        if kind is None:
            return None
        frozen = kind(child.num_features)
        for key in ("weight", "bias", "running_mean", "running_var"):
            getattr(frozen, key).copy_(getattr(child, key))
        return frozen.to(child.weight.device)

    return _replace(model, make)
