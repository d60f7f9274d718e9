"""Resample one tensor to another shape: the whole method zoo, pure and free of I/O.

Every method works one axis at a time. The operations we offer (nearest, linear, area, pooling,
selection) are separable, so resizing axis by axis equals resizing all axes at once, and a single
1-D kernel serves tensors of any rank: a bias, a linear weight, a conv kernel, an embedding table.

Adding a method is one record in ``interprune.methods`` plus one function here with ``@register(name)``;
it then appears in ``interprune methods``, the CLI, sweeps and reports.
"""

from __future__ import annotations

from typing import Callable, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from ..methods import METHODS, Kind

__all__ = ["RESAMPLERS", "resample", "resample_axis", "select_indices", "register"]


class AxisFn(Protocol):
    def __call__(self, x: Tensor, size: int) -> Tensor:
        """Resize the last axis of a 2-D ``(rows, n)`` float tensor to ``size``."""


# method name -> its axis function; ``None``: the method does not look at the source (``random``)
RESAMPLERS: dict[str, AxisFn | None] = {}


def register(name: str) -> Callable[[AxisFn], AxisFn]:
    """Register the axis function of a per-tensor or structured method recorded in ``interprune.methods``."""
    if name not in METHODS or METHODS[name].kind is Kind.DATA_AWARE:
        raise ValueError(f"method {name!r} has no per-tensor or structured record in interprune.methods")

    def wrap(fn: AxisFn) -> AxisFn:
        RESAMPLERS[name] = fn
        return fn

    return wrap


def select_indices(n: int, m: int) -> Tensor:
    """Indices of the ``m`` source positions that uniform selection keeps from ``n`` (or repeats).

    They depend on ``(n, m)`` only, so every tensor that shares a dimension (a layer's weight rows, its
    bias, the next layer's weight columns) keeps the same units: the selection is *consistent*, as in
    Weight Selection (Xu et al., 2024). Shrinking takes every k-th element for integer factors and
    rounded even spacing otherwise. Growing repeats each source element up to the next selected
    position, so growing and then shrinking gives back the original exactly.
    """
    if m <= n:
        if n % m == 0:
            return torch.arange(m) * (n // m)
        return torch.linspace(0, n - 1, m).round().long()
    picked = select_indices(m, n)  # positions that shrinking m -> n will read back
    return torch.searchsorted(picked, torch.arange(m), right=True) - 1


def _interp(mode: str) -> AxisFn:
    def fn(x: Tensor, size: int) -> Tensor:
        extra = {"align_corners": False} if mode == "linear" else {}
        return F.interpolate(x[None], size=size, mode=mode, **extra)[0]

    return fn


def _pool(reduce: str) -> AxisFn:
    """Fixed-window pooling as ``nn.AvgPool``/``nn.MaxPool`` do, with windows that tile the axis.

    Stride ``n // m`` and kernel ``n - (m - 1) * stride`` give exactly ``m`` equal windows; for integer
    factors that is ordinary non-overlapping pooling (so avg-pool equals area). Pooling cannot grow an
    axis, so growing falls back to adaptive pooling, which repeats elements.
    """

    def fn(x: Tensor, size: int) -> Tensor:
        n = x.shape[-1]
        if size > n:
            adaptive = F.adaptive_avg_pool1d if reduce == "avg" else F.adaptive_max_pool1d
            return adaptive(x[None], size)[0]
        stride = n // size
        kernel = n - (size - 1) * stride
        pool = F.avg_pool1d if reduce == "avg" else F.max_pool1d
        return pool(x[None], kernel_size=kernel, stride=stride)[0]

    return fn


register("nearest-exact")(_interp("nearest-exact"))
register("area")(_interp("area"))
register("avg-pool")(_pool("avg"))
register("max-pool")(_pool("max"))
register("nearest")(_interp("nearest"))
register("linear")(_interp("linear"))


@register("select")
def _select(x: Tensor, size: int) -> Tensor:
    return x.index_select(-1, select_indices(x.shape[-1], size).to(x.device))


@register("first")
def _first(x: Tensor, size: int) -> Tensor:
    return x[..., :size]  # growth is handled in resample(), where the target's values are known


RESAMPLERS["random"] = None  # reads nothing from the source: ``resample`` returns the target's own values


def resample_axis(tensor: Tensor, axis: int, size: int, method: str) -> Tensor:
    """Resize one axis of ``tensor`` to ``size`` with ``method`` (any rank, any float dtype)."""
    fn = RESAMPLERS[method]
    assert fn is not None, f"method {method!r} does not read the source"
    moved = tensor.movedim(axis, -1)
    rows = moved.reshape(-1, moved.shape[-1])
    out = fn(rows, size)
    return out.reshape(*moved.shape[:-1], size).movedim(-1, axis)


def resample(
    tensor: Tensor,
    shape: tuple[int, ...] | torch.Size,
    method: str,
    *,
    fill: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Return ``tensor`` resized to ``shape`` with ``method``; same dtype as ``tensor``.

    ``fill`` is the target's freshly initialised tensor: ``random`` returns it, and ``first`` uses it for
    the part it grows. Without ``fill`` those draw from N(0, std of the source) with ``generator``, so
    the result is still deterministic for a seed. Integer and boolean tensors (counters, ids) can only
    be selected, never averaged, so they always use ``select``. Same shape means an exact copy.
    """
    shape = tuple(int(s) for s in shape)
    if method not in RESAMPLERS:
        raise ValueError(f"unknown method {method!r}; choose one of: {', '.join(RESAMPLERS)}")
    if len(shape) != tensor.dim():
        raise ValueError(f"cannot resample a {tensor.dim()}-D tensor to {len(shape)}-D shape {shape}")
    if tuple(tensor.shape) == shape:
        return tensor.detach().clone()
    if fill is None and method in ("random", "first"):
        std = tensor.float().std() if tensor.numel() > 1 and tensor.is_floating_point() else torch.tensor(0.02)
        fill = (torch.randn(shape, generator=generator) * std).to(tensor.dtype)
    if method == "random":
        assert fill is not None
        return fill.detach().clone().to(tensor.dtype)
    floating = tensor.is_floating_point()
    work = tensor.detach().float() if floating else tensor.detach()
    name = method if floating else "select"  # index_select keeps integers exact
    for axis, size in enumerate(shape):
        size = min(size, work.shape[axis]) if method == "first" else size
        if work.shape[axis] != size:
            work = resample_axis(work, axis, size, name)
    if method == "first" and tuple(work.shape) != shape:
        assert fill is not None
        grown = fill.detach().clone().to(work.dtype)
        grown[tuple(slice(0, s) for s in work.shape)] = work
        work = grown
    return work.to(tensor.dtype)
