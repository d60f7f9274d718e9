"""Regularised least-squares refits from accumulated statistics: pure functions, no I/O, no modules.

Compensation refits a layer ``y = x @ W`` (a bias is a column of ones in ``x``) so the small model's
layer reproduces the source's outputs. A plain least-squares refit on a few hundred calibration examples
fits them well and can generalise badly: on text of another domain it left a pretrained encoder *worse*
than the chosen weights alone. So every refit here is pulled towards the weights the choice gave,
``W0`` (the selected or rotated source weights), not towards zero::

    W(lam) = argmin |X W - Y|^2 + lam |D^(1/2) (W - W0)|^2 = (A + lam D)^-1 (B + lam D W0)

with ``A = X^T X``, ``B = X^T Y`` and ``D = diag(A)`` (each input feature is penalised in its own units,
so one strength suits residual streams with outlier channels, and a bias column alike). At ``lam -> inf``
the refit *is* the choice, so "no compensation" is always one of the candidates. The strength is chosen
from a grid by the error on held-out examples, which needs only their statistics::

    err(W) = tr(W^T A_h W) - 2 tr(W^T B_h) + tr(C_h),   C_h = Y_h^T Y_h

Everything works on batches of independent problems too (leading axes): a layer norm's per-channel gain
and shift are one 2-input problem per channel. Statistics are plain tensors that add up over mini-batches,
so a streamed engine can accumulate them block by block and call :func:`choose_strength` at the end.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["row_chunks", "Moments", "moments", "shared_moments", "group_moments", "lift", "add_shared", "Bases", "channel_moments", "ridge_towards", "held_out_error", "choose_strength", "Choice", "GRID"]

CHUNK_BYTES = 64 * 2**20  # rows go to float64 in chunks of about this size
BLOCK_BYTES = 32 * 2**20  # candidate refits are solved this many bytes of float64 weights at a time
# relative strengths tried (``inf`` = keep the choice's weights); the held-out error picks one per layer
GRID = (1e-4, 1e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0, 3.0, 10.0, math.inf)


def row_chunks(*rows: Tensor, chunk_bytes: int = CHUNK_BYTES):
    """The same slices of row-aligned tensors (n, ...) in float64, about ``chunk_bytes`` at a time: an output
    layer over a 30,000-word vocabulary gives 2,048 tokens 500 MB of float64 rows, and a whole copy (then one
    more per part) costs more than the statistics summed from it."""
    width = sum(r[:1].numel() for r in rows)
    step = max(1, chunk_bytes // (8 * max(1, width)))
    for start in range(0, rows[0].shape[0], step):
        yield tuple(r[start:start + step].double() if r.is_floating_point() else r[start:start + step] for r in rows)


@dataclass
class Moments:
    """Sufficient statistics of ``Y ~ X W`` over ``n`` rows: ``xx = X^T X`` (..., d, d), ``xy = X^T Y``
    (..., d, k) and ``yy = tr(Y^T Y)`` per problem (...,). They add: stats of two mini-batches summed are
    the stats of both."""

    xx: Tensor
    xy: Tensor
    yy: Tensor
    n: int

    def __add__(self, other: Moments) -> Moments:
        return Moments(self.xx + other.xx, self.xy + other.xy, self.yy + other.yy, self.n + other.n)


def moments(x: Tensor, y: Tensor) -> Moments:
    """Statistics of rows ``x`` (..., n, d) and targets ``y`` (..., n, k), in float64."""
    return shared_moments(x, [y])[0]


def shared_moments(x: Tensor, ys: list[Tensor]) -> list[Moments]:
    """``moments(x, y)`` for several targets of the same rows (queries, keys and values read one input):
    ``X^T X`` is computed once and is the same tensor in every result, so it is also decomposed once
    (``_Basis``); each target costs only its ``X^T Y``."""
    return group_moments(x, ys, [False] * len(ys), held=False)


def group_moments(x: Tensor, ys: list[Tensor], lifted: list[bool], held: bool) -> list[Moments]:
    """``shared_moments`` where some targets are *lifted*: rows ``inputs`` of a linear map ``L`` applied later
    (``lift``), for a layer whose output has more columns than its input. Then ``xy = X^T inputs`` and, for
    held-out rows (``held``), ``yy`` holds ``inputs^T inputs``; for fitted rows ``tr(Y^T Y)`` is never used,
    and 0 is kept. A target given twice (the same tensor: gate and up read one source input) costs once.

    The source's output layer over a 30,000-word vocabulary made ``X^T Y`` cost 30,400 products per token and
    input feature; through its 1,024-wide input it costs 1,025, and the source no longer computes the logits."""
    x = x.double()
    xx = x.mT @ x
    found: dict[tuple[int, bool], tuple[Tensor, Tensor]] = {}
    out = []
    for y, up in zip(ys, lifted):
        key = (id(y), up)
        if key not in found:
            wide = y.double()
            yy = (wide.mT @ wide if held else wide.new_zeros(())) if up else (wide * wide).sum((-2, -1))
            found[key] = (x.mT @ wide, yy)
        out.append(Moments(xx, *found[key], int(x.shape[-2])))
    return out


def lift(stats: Moments, through: Tensor) -> Moments:
    """Lifted statistics (``group_moments``) turned into those of ``Y = inputs @ through``:
    ``X^T Y = (X^T inputs) through`` and ``tr(Y^T Y) = sum(through * (inputs^T inputs) through)``."""
    through = through.to(stats.xy.dtype)
    yy = (through * (stats.yy @ through)).sum() if stats.yy.dim() == 2 else stats.yy
    return Moments(stats.xx, stats.xy @ through, yy, stats.n)


def add_shared(totals: list[Moments | None], parts: list[Moments | None]) -> list[Moments | None]:
    """``total + part`` for each pair, summed into the totals in place: a fresh float64 sum per mini-batch and
    layer was fresh memory to fault in, a seventh of a 251M decoder's page faults. A tensor several totals
    share (``X^T X`` of queries, keys and values) is added to once, and stays one tensor, where their parts
    share one too; where they do not, each pair gets a sum of its own."""
    partners: dict[int, set[int]] = {}
    for total, part in zip(totals, parts):
        if total is not None and part is not None:
            for mine, theirs in ((total.xx, part.xx), (total.xy, part.xy), (total.yy, part.yy)):
                partners.setdefault(id(mine), set()).add(id(theirs))
    added: set[int] = set()

    def add(mine: Tensor, theirs: Tensor) -> Tensor:
        if len(partners[id(mine)]) > 1:
            return mine + theirs
        if id(mine) not in added:
            mine.add_(theirs)
            added.add(id(mine))
        return mine

    out = []
    for total, part in zip(totals, parts):
        if total is None or part is None:
            out.append(part if total is None else total)
            continue
        out.append(Moments(add(total.xx, part.xx), add(total.xy, part.xy), add(total.yy, part.yy), total.n + part.n))
    return out


def _penalty(xx: Tensor) -> Tensor:
    """``D``: the diagonal of ``X^T X`` (floored, so a dead input still has a well-posed solve)."""
    diag = xx.diagonal(dim1=-2, dim2=-1)
    floor = diag.mean(-1, keepdim=True).clamp_min(1e-12) * 1e-6
    return torch.maximum(diag, floor)


def ridge_towards(stats: Moments, w0: Tensor, strength: float) -> Tensor:
    """``W(lam)`` for relative strength ``strength`` (0: plain least squares, inf: ``w0``)."""
    w0 = w0.to(stats.xy.dtype)
    if math.isinf(strength):
        return w0.clone()
    d = _penalty(stats.xx) * strength
    system = stats.xx + torch.diag_embed(d)
    rhs = stats.xy + d.unsqueeze(-1) * w0
    if strength == 0:  # plain least squares may be singular: a minimum-norm answer, not an error
        return torch.linalg.lstsq(system, rhs).solution
    return torch.linalg.solve(system, rhs)


def held_out_error(stats: Moments, w: Tensor) -> Tensor:
    """``|X_h W - Y_h|^2`` per problem, from the held-out statistics alone."""
    return _quadratic(stats, w) + stats.yy


@dataclass
class Choice:
    """The chosen refit: its weights (refit on fit + held-out rows), strength, and the held-out error of
    every strength tried relative to the choice's own weights (``inf``): below 1 means the refit helps."""

    weight: Tensor
    strength: float
    errors: dict[float, float]


def choose_strength(fit: Moments, held: Moments | None, w0: Tensor, grid: tuple[float, ...] = GRID,
                    *, slack: float = 0.0, block_bytes: int = BLOCK_BYTES, bases: "Bases | None" = None,
                    through: Tensor | None = None) -> Choice:
    """Pick the strength whose refit on ``fit`` has the least error on ``held`` (summed over problems),
    preferring the strongest pull towards ``w0`` within ``slack`` (relative) of that least error, then
    refit on both parts with it. Without held-out rows the middle of the grid is used.

    Output columns are independent problems that share ``X^T X``, so they are solved a block of columns at a
    time (``block_bytes`` of float64 weights): an output layer over a 30,000-word vocabulary would otherwise
    hold several candidate weight matrices of 125 MB each at once. ``bases`` keeps the decomposition of
    statistics that several layers share (``shared_moments``), so it is made once for all of them. Lifted
    statistics (``group_moments``) come with their map ``through`` and are lifted a block of columns at a
    time too: lifting all 30,400 columns at once held five matrices of 125 MB. ``w0`` may be in a narrower
    dtype than the statistics (a layer's float32 weights): it is widened a block of columns at a time, and the
    refit comes back in its dtype."""
    # a lifted block of columns makes float64 products as tall as the source input (``lift``): sized by that
    columns = _column_blocks(w0 if through is None else through, block_bytes)
    if held is None or held.n == 0:
        strength = grid[len(grid) // 2]
        return Choice(_by_columns(fit, w0, strength, columns, through), strength, {})
    quadratic = {s: 0.0 for s in (*grid, math.inf)}
    basis = (bases if bases is not None else Bases()).get(fit.xx, held.xx)
    total = 0.0 if through is not None else float(held.yy.sum())
    for cols in columns:
        part_fit, part_held = _view(fit, cols, through), _view(held, cols, through)
        if through is not None:
            total += float(part_held.yy.sum())
        prior = w0[..., cols].to(fit.xy.dtype)
        for s, value in basis.quadratics(part_fit.xy, part_held.xy, prior, quadratic).items():
            quadratic[s] += value
    base = max(quadratic[math.inf] + total, 1e-30)
    errors = {s: (quadratic[s] + total) / base for s in grid}
    best = min(errors.values())
    strength = max(s for s, e in errors.items() if e <= best * (1 + slack) + 1e-12)
    return Choice(_by_columns(fit + held, w0, strength, columns, through), strength, errors)


def _column_blocks(w0: Tensor, block_bytes: int) -> list[slice]:
    per_column = 8 * max(1, w0[..., :1].numel())
    step = max(1, block_bytes // per_column)
    return [slice(i, i + step) for i in range(0, w0.shape[-1], step)]


def _view(stats: Moments, cols: slice, through: Tensor | None) -> Moments:
    """The statistics of these output columns (lifted through their columns of ``through`` when given)."""
    if through is not None:
        return lift(stats, through[..., cols])
    return Moments(stats.xx, stats.xy[..., cols], stats.yy, stats.n)


def _by_columns(stats: Moments, w0: Tensor, strength: float, columns: list[slice],
                through: Tensor | None = None) -> Tensor:
    parts = [ridge_towards(_view(stats, cols, through), w0[..., cols], strength).to(w0.dtype) for cols in columns]
    return parts[0] if len(parts) == 1 else torch.cat(parts, -1)


class _Basis:
    """Every strength's refit from one eigendecomposition instead of a solve each.

    With ``s = D^(-1/2)`` and ``s A s = Q L Q^T``, the refit is ``W(lam) = s Q Z`` with
    ``Z = (Q^T s B + lam Q^T D^(1/2) W0) / (L + lam)``: one division per strength. The held-out error's
    quadratic part is then ``tr(Z^T H Z) - 2 tr(Z^T G)`` with ``H = Q^T s A_h s Q`` and ``G = Q^T s B_h``,
    so trying ten strengths costs one decomposition and a few products over the columns, not ten solves and
    ten ``A_h W`` products (two fifths of a 251M decoder's calibration went to those)."""

    def __init__(self, xx: Tensor, held_xx: Tensor):
        self.d = _penalty(xx)
        self.s = self.d.rsqrt()
        scaled = self.s.unsqueeze(-1) * xx * self.s.unsqueeze(-2)
        values, self.q = torch.linalg.eigh((scaled + scaled.mT) / 2)
        self.values = values.clamp_min(0).unsqueeze(-1)
        self.h = self.q.mT @ (self.s.unsqueeze(-1) * held_xx * self.s.unsqueeze(-2)) @ self.q

    def quadratics(self, xy: Tensor, held_xy: Tensor, w0: Tensor, strengths) -> dict[float, float]:
        """``_quadratic(held, W(lam))`` summed over problems, for every strength, on these columns. With
        ``P = (L + lam)^-1``, ``tr(Z^T H Z) = sum(H * P (CC^T + lam (CE^T + EC^T) + lam^2 EE^T) P)``: the
        products over the columns are made once, and each strength costs ``d^2``, not ``d^2 k``."""
        c = self.q.mT @ (self.s.unsqueeze(-1) * xy)
        e = self.q.mT @ (self.d.sqrt().unsqueeze(-1) * w0)
        g = self.q.mT @ (self.s.unsqueeze(-1) * held_xy)
        cg, eg = (c * g).sum(-1), (e * g).sum(-1)
        # sum(H * P M P) = p^T (H * M) p: the three products with H are made once, in place, and each
        # strength costs three matrix-vector products (it made seven d x d temporaries: fresh memory whose
        # page faults were a third of a 251M decoder's calibration time)
        hcc, hee = (c @ c.mT).mul_(self.h), (e @ e.mT).mul_(self.h)
        ce = c @ e.mT
        hcross = ce.add_(ce.mT.clone()).mul_(self.h)
        found = {}
        for lam in strengths:
            if math.isinf(lam):  # Z = E: the choice's own weights
                found[lam] = float((hee.sum((-2, -1)) - 2 * eg.sum(-1)).sum())
                continue
            p = 1.0 / (self.values.squeeze(-1) + lam)
            quadratic = _pmp(p, hcc) + lam * _pmp(p, hcross) + lam * lam * _pmp(p, hee)
            found[lam] = float((quadratic - 2 * (p * (cg + lam * eg)).sum(-1)).sum())
        return found


def _pmp(p: Tensor, m: Tensor) -> Tensor:
    """``p^T m p`` per problem: ``p`` (..., d), ``m`` (..., d, d)."""
    return ((m @ p.unsqueeze(-1)).squeeze(-1) * p).sum(-1)


class Bases:
    """``_Basis`` of each pair of ``X^T X`` tensors (fitted, held out), made once however many layers share
    them. It holds on to the tensors it was made from, so an id is never reused for other statistics."""

    def __init__(self) -> None:
        self.made: dict[tuple[int, int], tuple[Tensor, Tensor, _Basis]] = {}

    def get(self, xx: Tensor, held_xx: Tensor) -> "_Basis":
        key = (id(xx), id(held_xx))
        if key not in self.made:
            self.made[key] = (xx, held_xx, _Basis(xx, held_xx))
        return self.made[key][2]


def _quadratic(stats: Moments, w: Tensor) -> Tensor:
    """``held_out_error`` without its constant ``tr(Y^T Y)``: the part that depends on ``w``'s columns."""
    w = w.to(stats.xy.dtype)
    return (w * (stats.xx @ w)).sum((-2, -1)) - 2 * (w * stats.xy).sum((-2, -1))


def channel_moments(x: Tensor, y: Tensor) -> Moments:
    """Statistics of one ``y_c ~ g_c x_c + b_c`` problem per channel ``c`` (a norm's gain and shift),
    from rows ``x`` and ``y`` of shape (n, c), without materialising a (c, n, 2) design."""
    x, y = x.double(), y.double()
    n = x.shape[0]
    sx, sxx, sy, sxy = x.sum(0), (x * x).sum(0), y.sum(0), (x * y).sum(0)
    xx = torch.stack([torch.stack([sxx, sx], -1), torch.stack([sx, torch.full_like(sx, n)], -1)], -2)
    xy = torch.stack([sxy, sy], -1).unsqueeze(-1)
    return Moments(xx, xy, (y * y).sum(0), n)
