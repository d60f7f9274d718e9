"""Rotate the residual stream of a pre-norm model to its principal directions before cutting it (SliceGPT).

Choosing which residual channels to keep throws away whatever the dropped channels carried, and every layer
downstream reads a stream that lost those directions. The stream's energy is not spread evenly over its
channels but over a few *directions*, which no channel subset follows. In a pre-norm transformer every layer
reads the stream through an RMS norm and writes it through a linear map (or an embedding), and an RMS norm
commutes with an orthogonal rotation ``Q`` (``|Q^T x| = |x|``) once its per-channel gain has moved into the
layers that read it. So the model computes the same function with its stream turned to ``Q^T x``: writers
``W -> Q^T W``, readers ``W -> W diag(g) Q``, gains -> 1. With ``Q`` the principal directions of the stream
(what the norms see, each token normalised as a norm does), the leading channels carry the most, and the cut
keeps them (SliceGPT, Ashkboos et al. 2024, with one rotation for the whole stream: a stock model has no
matrix on its residual connections that could change the basis between layers).

Two corrections make the small model's stock norms compute what the rotated source's did on the kept
channels: an RMS norm over ``d'`` channels divides by ``sqrt(|x'|^2 / d')`` where the source divided by
``sqrt(|x|^2 / d)``, so each norm's gain becomes ``sqrt(f d / d')``, with ``f`` the share of the stream's
energy the kept channels hold, measured per norm on calibration data.

Where the output layer is the embedding itself (tied weights), the final norm's gain cannot move into it, and
a diagonal gain in the turned basis is no substitute (SmolLM2-135M, whose final gains run from -2.1 to 3.3,
agreed with its own top token on 23% of positions at full width). Such a model is turned only when the small
model unties its output layer (``--set tie_word_embeddings=false``), or when that gain is even.

Only what verifiably rotates is rotated: the rotated model's stream is compared with the source's at every
norm on a calibration mini-batch, and a family whose stream is read another way (LayerNorm's mean, a post-norm
layer, a sine position encoding) is refused with one line that names the reason.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import Tensor, nn

from ..errors import InterpruneError
from ..plan.fused import PART_MARK
from ..precision import float32_copy
from ..walk import Batches, Stop, hooked_pass
from .rotate import _signed

__all__ = ["ResidualTurn", "rotate_residual", "gain_form", "TOLERANCE"]

TOLERANCE = 1e-3  # the rotated stream may differ from the source's turned one by this much (relative), float32 rounding


@dataclass
class ResidualTurn:
    """A source turned to the principal directions of its residual stream, and what the small model's norms
    need once the transfer has filled it (``settle``)."""

    model: nn.Module  # the rotated source: the same function
    choices: dict[str, Tensor]  # residual dimension -> the leading channels it keeps
    # target norm weight -> (a, b, c): its gain is a * weight + b, and the cut multiplies the gain by c
    scales: dict[str, tuple[float, float, float]] = field(default_factory=dict)
    error: float = 0.0  # the largest relative difference of the rotated stream from the source's, turned

    def settle(self, target: nn.Module) -> None:
        """Scale the small model's norms (transferred with the rotated source's gains) for a stream of fewer
        channels, see the module doc."""
        state = target.state_dict(keep_vars=True)
        for name, (a, b, c) in self.scales.items():
            slot = state[name]
            gain = (a * slot.data.double() + b) * c
            slot.data.copy_(((gain - b) / a).to(slot.dtype))


def gain_form(norm: nn.Module, width: int) -> tuple[float, float] | None:
    """``(a, b)`` when ``norm`` is an RMS norm whose per-channel gain is ``a * weight + b`` (``weight`` for
    Llama's, ``1 + weight`` for Gemma's), else None (a LayerNorm subtracts the mean, which no rotation keeps)."""
    weight = getattr(norm, "weight", None)
    if not isinstance(weight, Tensor) or weight.dim() != 1 or weight.numel() != width:
        return None
    probe = copy.deepcopy(norm).float().eval()
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(8, width, generator=generator)
    unit = x / x.pow(2).mean(-1, keepdim=True).sqrt()
    with torch.no_grad():
        try:
            fits = []
            for value in (0.0, 1.0):
                probe.weight.fill_(value)
                fits.append(float((probe(x) * unit).sum() / (unit * unit).sum()))
            b, a = fits[0], fits[1] - fits[0]
            if abs(a) < 1e-6:
                return None
            check = torch.rand(width, generator=generator) + 0.5
            probe.weight.copy_(check)
            expected = (a * check + b) * unit
            if float((probe(x) - expected).norm() / expected.norm()) > TOLERANCE:
                return None
        except (RuntimeError, TypeError):
            return None
    return a, b


def _refuse(why: str) -> InterpruneError:
    return InterpruneError(f"--rotate residual cannot turn this model's residual stream: {why}; use --rotate heads "
                           f"or no rotation")


@dataclass
class _Role:
    """One residual tensor axis and what it does to the stream."""

    name: str  # source tensor name
    axis: int
    kind: str  # "writer", "reader" or "norm"
    owner: str  # module name
    form: tuple[float, float] | None = None  # a norm's gain as a * weight + b (``gain_form``)


def _roles(source: nn.Module, dim: Any, rename: Callable[[str], str]) -> list[_Role]:
    modules = dict(source.named_modules())
    roles = []
    for axis in dim.axes:
        if axis.parts != 1 or axis.group != 1 or PART_MARK in axis.tensor:
            raise _refuse(f"{axis.tensor} holds the stream in parts")
        name = rename(axis.tensor)
        owner, _, param = name.rpartition(".")
        module = modules.get(owner)
        if isinstance(module, nn.Linear):
            kind = "reader" if (param, axis.axis) == ("weight", 1) else "writer"
        elif isinstance(module, nn.Embedding) and (param, axis.axis) == ("weight", 1):
            kind = "writer"
        elif module is not None and param == "weight" and (form := gain_form(module, dim.source)) is not None:
            kind = "norm"
        else:
            raise _refuse(f"{name} ({type(module).__name__}) reads or writes it other than as a linear map, an "
                          f"embedding or an RMS norm")
        roles.append(_Role(name, axis.axis, kind, owner, form if kind == "norm" else None))
    return roles


def _input(args: tuple, kwargs: dict) -> Tensor:
    return args[0] if args else next(v for v in kwargs.values() if isinstance(v, Tensor))


def _storage(t: Tensor) -> int:
    return t.untyped_storage().data_ptr()


@torch.no_grad()
def _statistics(model: nn.Module, norms: dict[str, int], readers: list[str], batches: Batches,
                after_first: Callable[[dict[str, str]], None] = lambda links: None):
    """One pass of the source: per residual dimension, the covariance of the normalised stream at every norm
    input (summed over norms and tokens); which norm each reader reads (on the first mini-batch, by storage);
    and the stream at every norm for the first example of the first mini-batch (for the check).
    ``after_first(links)`` runs once the first mini-batch has found the links: a refusal that needs them
    comes then, not after the whole pass (SmolLM2's tied output layer was refused after 38 s)."""
    named = dict(model.named_modules())
    covariances: dict[int, Tensor] = {}
    first: dict[str, Tensor] = {}
    outputs: dict[int, str] = {}
    links: dict[str, str] = {}
    state = {"batch": -1, "last": None}

    def norm_hook(name: str, dim: int) -> Callable:
        def fn(module, args, kwargs, output) -> None:
            x = _input(args, kwargs)
            rows = x.reshape(-1, x.shape[-1]).double()
            rows = rows / rows.norm(dim=-1, keepdim=True).clamp_min(1e-12)
            covariances[dim] = covariances.get(dim, 0) + rows.T @ rows
            if state["batch"] == 0:
                first[name] = x[:1].detach().float().clone()
                outputs[_storage(output)] = name
                state["last"] = name
            elif name == state["last"]:
                raise Stop  # nothing after the last norm adds to the statistics
        return fn

    def reader_hook(name: str) -> Callable:
        def fn(module, args, kwargs, output) -> None:
            if state["batch"] == 0:
                norm = outputs.get(_storage(_input(args, kwargs)))
                if norm is not None:
                    links[name] = norm
        return fn

    def next_batch() -> None:
        state["batch"] += 1
        if state["batch"] == 1:
            after_first(links)

    hooks = [(named[n], norm_hook(n, d)) for n, d in norms.items()]
    hooks += [(named[n], reader_hook(n)) for n in readers]
    hooked_pass(model, batches, hooks, with_kwargs=True, before_batch=next_batch)
    if state["batch"] < 1:  # a single mini-batch
        after_first(links)
    return covariances, links, first


@torch.no_grad()
def _check(rotated: nn.Module, norms: dict[str, int], first: dict[str, Tensor], rotations: dict[int, Tensor],
           kept: dict[int, int], batches: Batches) -> tuple[float, dict[str, float]]:
    """The rotated model on the first mini-batch: the largest relative difference of its stream from the
    source's turned one (at every norm, first example), and per norm the mean over tokens of
    ``sqrt(kept energy / energy)``, the share of the stream the cut keeps there."""
    named = dict(rotated.named_modules())
    errors: list[float] = []
    shares: dict[str, float] = {}
    state = {"batch": -1}

    def hook(name: str, dim: int) -> Callable:
        def fn(module, args, kwargs, output) -> None:
            if state["batch"] > 0:
                raise Stop
            x = _input(args, kwargs).float()
            expected = first[name] @ rotations[dim].float()
            errors.append(float((x[:1] - expected).norm() / expected.norm().clamp_min(1e-12)))
            energy = x.pow(2)
            share = energy[..., :kept[dim]].sum(-1) / energy.sum(-1).clamp_min(1e-30)
            shares[name] = float(share.sqrt().mean())
        return fn

    def next_batch() -> None:
        state["batch"] += 1

    hooked_pass(rotated, batches, [(named[n], hook(n, d)) for n, d in norms.items()], with_kwargs=True,
                before_batch=next_batch)
    return max(errors, default=math.inf), shares


def _aliases(model: nn.Module) -> dict[str, list[str]]:
    """Parameter name -> every name of the same tensor (tied weights)."""
    groups: dict[int, list[str]] = {}
    for name, tensor in model.named_parameters(remove_duplicate=False):
        groups.setdefault(id(tensor), []).append(name)
    return {name: names for names in groups.values() for name in names}


@torch.no_grad()
def rotate_residual(source: nn.Module, target: nn.Module, plan: Any, inputs: Batches,
                    rename: Callable[[str], str] = lambda name: name) -> ResidualTurn | None:
    """``source`` turned to the principal directions of every residual dimension the plan cuts (None when
    none is cut), see the module doc; ``target`` is the small model (which of its weights are tied). Raises a
    one-line ``InterpruneError`` for a model whose stream does not rotate. ``rename`` maps the plan's (target)
    tensor names to the source's."""
    dims = [d for d in plan.dimensions if d.kind == "residual" and d.target < d.source]
    if not dims:
        return None
    if any(d.kind == "layers" and d.target < d.source for d in plan.dimensions):
        raise _refuse("it also loses layers, whose weights would stay unturned; cut the depth in a second shrink")
    for dim in dims:
        if dim.aligned is not None:
            raise _refuse(f"{dim.name} carries a sine position encoding, which fixes its channels")
    roles = {i: _roles(source, dim, rename) for i, dim in enumerate(dims)}
    norms = {r.owner: i for i, rs in roles.items() for r in rs if r.kind == "norm"}
    if not norms:
        raise _refuse("no RMS norm reads it")
    readers = [r.owner for rs in roles.values() for r in rs if r.kind == "reader"]
    modules = dict(source.named_modules())
    forms = {r.owner: r.form for rs in roles.values() for r in rs if r.kind == "norm"}
    gains = {n: a * modules[n].weight.detach().double() + b for n, (a, b) in forms.items()}
    names = {r.name for rs in roles.values() for r in rs}
    target_names = {rename(axis.tensor): axis.tensor for dim in dims for axis in dim.axes}
    ties: list[Any] = []
    covariances, links, first = _statistics(source, norms, readers, inputs, lambda found: ties.extend(
        _ties(source, target, roles, found, gains, names, target_names)))
    tied, untie, keep_gain = ties
    rotations = {i: _signed(torch.linalg.eigh(c)[1].flip(-1)) for i, c in covariances.items()}
    kept = {i: dim.target for i, dim in enumerate(dims)}
    rotated = float32_copy(source, only=names)
    modules = dict(rotated.named_modules())
    for r in untie:  # the small model has its own output layer: the source's is copied apart from the embedding
        param = r.name.rpartition(".")[2]
        setattr(modules[r.owner], param, nn.Parameter(getattr(modules[r.owner], param).detach().clone()))
    tied_now = {r.name for r in tied if r not in untie}
    _turn(rotated, roles, rotations, forms, gains, links, keep_gain, tied_now)
    error, shares = _check(rotated, norms, first, rotations, kept, inputs)
    if not error <= TOLERANCE:
        raise _refuse(f"the turned model's stream differs from the source's by {error:.1e} (relative): a layer "
                      f"reads it other than through RMS norms and linear maps")
    scales = {target_names[r.name]: (*forms[r.owner], math.sqrt(dims[i].source / dims[i].target) * shares[r.owner])
              for i, rs in roles.items() for r in rs if r.kind == "norm"}
    return ResidualTurn(rotated, {dim.name: torch.arange(dim.target) for dim in dims}, scales, error)


def _ties(source: nn.Module, target: nn.Module, roles: dict[int, list[_Role]], links: dict[str, str],
          gains: dict[str, Tensor], names: set[str], target_names: dict[str, str]):
    """Readers whose weight another tensor shares (an output layer tied to the embedding): the list, those the
    small model unties (they get their own weight), and the norms that keep their gain because it is even (the
    same in every basis). Any other tie is refused: the gain cannot move into a weight the embedding shares."""
    aliases, small = _aliases(source), _aliases(target)
    tied = [r for rs in roles.values() for r in rs if r.kind == "reader" and len(aliases.get(r.name, [])) > 1]
    untie, keep_gain = [], set()
    for r in tied:
        norm = links.get(r.owner)
        if norm is None or sum(1 for n in links.values() if n == norm) > 1 or not set(aliases[r.name]) <= names:
            raise _refuse(f"{r.name} shares its weight with another tensor in a way a rotation cannot follow")
        if len(small.get(target_names[r.name], [])) <= 1:
            untie.append(r)
        elif float(gains[norm].max() - gains[norm].min()) <= 1e-6 * float(gains[norm].abs().max()):
            keep_gain.add(norm)
        else:
            raise _refuse(f"{r.name} is the embedding's own weight (tied), so the final norm's gain cannot move "
                          f"into it; add --set tie_word_embeddings=false (the small model gets its own output "
                          f"layer)")
    return tied, untie, keep_gain


def _turn(rotated: nn.Module, roles: dict[int, list[_Role]], rotations: dict[int, Tensor],
          forms: dict[str, tuple[float, float]], gains: dict[str, Tensor], links: dict[str, str],
          keep_gain: set[str], tied: set[str]) -> None:
    """Turn every residual tensor of ``rotated`` in place, each once (tied names share one tensor): writers and
    readers along their stream axis (``t @ Q``; a reader first takes the gain of the norm it reads), norms to
    an even gain of 1 (or their own, when kept)."""
    state = rotated.state_dict(keep_vars=True)
    done: set[int] = set()
    for i, rs in roles.items():
        q = rotations[i]
        for r in rs:
            slot = state[r.name]
            if id(slot) in done:
                continue
            done.add(id(slot))
            if r.kind == "norm":
                a, b = forms[r.owner]
                gain = gains[r.owner] if r.owner in keep_gain else torch.ones_like(gains[r.owner])
                slot.data.copy_(((gain - b) / a).to(slot.dtype))
                continue
            w = slot.data.double().movedim(r.axis, -1)
            if r.kind == "reader" and r.owner in links and r.name not in tied:
                w = w * gains[links[r.owner]]
            slot.data.copy_((w @ q).movedim(-1, r.axis).to(slot.dtype))
