"""Which units to keep: one importance score per unit of every dimension of the plan, and the choice.

A dimension (the residual stream, one layer's FFN units, one attention's head width) is shared by
several tensors, so it gets *one* score, summed over every tensor axis that belongs to it, and one
choice applied to all of them: a kept unit keeps its row in the layer that writes it and its column in
every layer that reads it. Each tensor's contribution is divided by its mean, so a large tensor does
not outvote a small one.

* ``magnitude``: the squared norm of each unit's weights (no data).
* ``calibrated``: activations on calibration inputs, collected with forward hooks: for a layer that
  reads the dimension, ``E[x_j^2] * |W[:, j]|^2`` (Wanda's score, how much the unit moves the output);
  for one that writes it, ``E[y_i^2]``. Tensors no hook sees (biases, embeddings) add nothing.

A parameter-free encoding fixes some choices (``Dimension.aligned``: the sine position embedding of
the DETR family, found by the plan); those win over any score. With grouped-query attention the query
heads follow the key/value heads kept. Depth is chosen here too: which source layers a shallower model
keeps (``first``, ``uniform``, or ``importance``: the layers that change the hidden state most).
"""

from __future__ import annotations

import weakref

from typing import Any, Callable

import torch
from torch import Tensor, nn

from ..methods import LAYER_CHOICES
from ..plan import grouped_heads
from ..plan.fused import real_name, split_state
from ..weights.resample import select_indices
from .expert_stats import expert_scores
from ..walk import Batches, Stop, hooked_pass

__all__ = ["magnitude_scores", "activation_scores", "choose", "choose_layers", "layer_influence",
           "layer_name_map", "SCORED_KINDS"]

Batch = dict[str, Any]
SQUARE_ROWS = 256  # rows squared and summed together before the float64 sum (see ``_square_sums``)
SCORED_KINDS = ("residual", "ffn", "heads", "head_dim", "kv_heads", "channels", "stage", "experts")


def _units(value: Tensor, axis: Any, units: int) -> Tensor:
    """Squared norm of each unit along ``axis`` (parts and group members summed)."""
    t = value.detach().float().movedim(axis.axis, 0)
    return t.reshape(axis.parts, units, axis.group, -1).pow(2).sum(dim=(0, 2, 3))


def _normalised(score: Tensor) -> Tensor:
    return score / score.mean().clamp_min(1e-12)


def magnitude_scores(state: dict[str, Tensor], plan: Any,
                     rename: Callable[[str], str] = lambda name: name) -> dict[str, Tensor]:
    """Per dimension, the summed (per-tensor normalised) squared weight norms of its units. ``rename``
    maps the plan's (target) tensor names to ``state``'s when layers were dropped."""
    scores = {}
    state = split_state(getattr(plan, "fused", {}), state, rename)  # fused q|k|v, gate|up: scored by part
    for dim in plan.dimensions:
        total = torch.zeros(dim.source)
        for axis in dim.axes:
            value = state.get(rename(axis.tensor))
            if value is not None and value.is_floating_point():
                total += _normalised(_units(value, axis, dim.source)).cpu()  # choices live on the CPU
        scores[dim.name] = total
    return scores


def _square_sums(rows: Tensor, block: int = SQUARE_ROWS) -> Tensor:
    """Per-feature sums of squares of ``rows`` (n, d): each block of ``block`` rows is squared and summed in
    the rows' own precision, and the blocks are added in float64. A score only ranks units, so a relative
    error near 1e-7 changes nothing, and converting every row to float64 first made this 8 times slower:
    the importance hooks were a third of a 251M decoder's scoring pass."""
    total = rows.new_zeros(rows.shape[-1], dtype=torch.float64)
    for start in range(0, rows.shape[0], block):
        chunk = rows[start:start + block]
        if chunk.dtype not in (torch.float32, torch.float64):
            chunk = chunk.float()  # half precision squares overflow above 256
        total += (chunk * chunk).sum(0)
    return total


@torch.no_grad()
def _energies(model: nn.Module, inputs: Batch | Batches, modules: dict[str, tuple[bool, bool]]
              ) -> dict[str, tuple[Tensor | None, Tensor | None]]:
    """Mean squared input and output per feature (last axis; channels for convolutions) of ``modules``,
    over every mini-batch; a module called several times per forward sums the means of its calls.
    ``modules`` says which of the two each module's scores read (None for the other): a language model's
    output layer is scored by its input alone, and squaring its 30,000-wide output was a third of the pass."""
    sums: dict[tuple[str, int], list] = {}  # (module, call) -> [sum x^2, sum y^2, rows]
    calls: dict[str, int] = {}

    events, first = [0], [0]  # hooked calls in this forward, and in the first one (0: not over yet)

    def hook(name: str) -> Callable:
        def fn(module: nn.Module, args: tuple, output: Tensor | None = None) -> None:
            events[0] += 1
            if args and isinstance(args[0], Tensor):  # else called with keywords only: no input to score
                add(name, isinstance(module, nn.Conv2d), args[0], output)
            if events[0] == first[0]:
                raise Stop  # the rest of the forward feeds no score: a language model's logits are not computed
        return fn

    def add(name: str, conv: bool, x: Tensor, output: Tensor | None) -> None:
        need_in, need_out = modules[name]
        key = (name, calls.get(name, 0))
        calls[name] = key[1] + 1
        rows = _feature_rows(x, conv)
        ex = known(x, rows, conv) if need_in else None
        ey = known(output, _feature_rows(output, conv), conv) if need_out and output is not None else None
        if key in sums:
            sums[key][0] = _plus(sums[key][0], ex)  # not in place: a sum may be shared by the tensor's readers
            sums[key][1] = _plus(sums[key][1], ey)
            sums[key][2] += rows.shape[0]
        else:
            sums[key] = [ex, ey, rows.shape[0]]

    done: dict[tuple[int, bool], tuple[Any, int, Tensor]] = {}  # one forward's summed tensors (held weakly)

    def known(tensor: Tensor, rows: Tensor, conv: bool) -> Tensor:
        """Queries, keys and values read one tensor, and a norm's output is the next layer's input: each
        tensor's sums are computed once per forward (unless it was changed in place since)."""
        seen = done.get((id(tensor), conv))
        if seen is not None and seen[0]() is tensor and seen[1] == tensor._version:
            return seen[2]
        sums = _square_sums(rows)
        done[(id(tensor), conv)] = (weakref.ref(tensor), tensor._version, sums)
        return sums

    def next_batch() -> None:
        calls.clear()
        done.clear()
        first[0] = first[0] or events[0]  # the first forward ran whole: later ones stop at its last hooked call
        events[0] = 0

    named = dict(model.named_modules())
    present = [n for n in modules if n in named]
    # a module scored by its input alone is hooked before it runs: the forward may stop there, unrun
    alone = {n for n in present if modules[n] == (True, False)}
    hooked_pass(model, inputs, [(named[n], hook(n)) for n in present if n not in alone],
                pre=[(named[n], hook(n)) for n in present if n in alone], before_batch=next_batch)
    return _means(sums)


def _feature_rows(t: Tensor, conv: bool) -> Tensor:
    """Activations as (rows, features): channels last for convolutions."""
    t = t.movedim(1, -1) if conv else t
    return t.reshape(-1, t.shape[-1])


def _means(sums: dict[tuple[str, int], list]) -> dict[str, tuple[Tensor | None, Tensor | None]]:
    """Per module, the mean squares of each call (sums over rows, divided by the rows) summed over its calls."""
    found: dict[str, list[Tensor | None]] = {}
    for (name, _), (ex, ey, rows) in sorted(sums.items(), key=lambda kv: kv[0]):
        mean = [None if ex is None else ex / rows, None if ey is None else ey / rows]
        found[name] = mean if name not in found else [_plus(found[name][0], mean[0]), _plus(found[name][1], mean[1])]
    return {n: tuple(None if e is None else e.float() for e in v) for n, v in found.items()}  # type: ignore[misc]


def _plus(a: Tensor | None, b: Tensor | None) -> Tensor | None:
    return None if a is None or b is None else a + b


def activation_scores(model: nn.Module, plan: Any, inputs: Batch | Batches,
                      rename: Callable[[str], str] = lambda name: name) -> dict[str, Tensor]:
    """Per dimension, activation-based scores on ``inputs`` (see the module docstring); a dimension no
    hooked layer touches falls back to weight magnitude, so every dimension gets a score. ``rename``
    maps the plan's (target) names to ``model``'s when layers were dropped."""
    fused = getattr(plan, "fused", {})
    state = split_state(fused, model.state_dict(), rename)
    owners = {rename(real_name(a.tensor).rpartition(".")[0]) for d in plan.dimensions for a in d.axes
              if real_name(a.tensor).endswith(".weight")}
    named = dict(model.named_modules())
    hooked = {n for n in owners if isinstance(named.get(n), (nn.Linear, nn.Conv2d, nn.LayerNorm))}
    sides: dict[str, tuple[bool, bool]] = {}  # module -> (its input scored, its output scored)
    for dim in plan.dimensions:
        for axis in dim.axes:
            owner, _, leaf = real_name(axis.tensor).rpartition(".")
            owner = rename(owner)
            if owner in hooked and leaf == "weight":
                norm = isinstance(named[owner], nn.LayerNorm)
                was = sides.get(owner, (False, False))
                sides[owner] = (was[0] or (axis.axis == 1 and not norm), was[1] or norm or axis.axis == 0)
    energy = _energies(model, inputs, sides)
    fallback = magnitude_scores(state, plan, rename)
    scores = {}
    for dim in plan.dimensions:
        total, used = torch.zeros(dim.source), False
        for axis in dim.axes:
            owner, _, leaf = real_name(axis.tensor).rpartition(".")
            owner = rename(owner)
            if leaf != "weight" or owner not in energy:
                continue
            e_in, e_out = _part_energy(fused, axis, energy[owner])
            weight = state[rename(axis.tensor)].float()
            if isinstance(named[owner], nn.LayerNorm) or axis.axis == 0:
                per = e_out
            elif axis.axis == 1:
                per = e_in * weight.movedim(1, 0).reshape(weight.shape[1], -1).pow(2).sum(1)
            else:
                continue
            per = per.reshape(axis.parts, dim.source, axis.group).sum(dim=(0, 2))
            total += _normalised(per).cpu()  # a model on a GPU: scores and choices live on the CPU
            used = True
        scores[dim.name] = total if used else fallback[dim.name]
    scores.update(expert_scores(model, plan, inputs, rename))  # experts: on the tokens routed to each
    return scores


def _part_energy(fused: dict, axis: Any, energy: tuple) -> tuple:
    """A fused layer's output energies restricted to one part (q, k, v; gate, up) when ``axis`` is one."""
    whole = fused.get(real_name(axis.tensor))
    if whole is None:
        return energy
    part = next(p for p in whole.parts if whole.part_name(p) == axis.tensor)
    return energy[0], None if energy[1] is None else energy[1][part.source.to(energy[1].device)]


def choose(plan: Any, scores: dict[str, Tensor]) -> dict[str, Tensor]:
    """Kept source units per shrunk dimension: the aligned ones where an encoding fixes them, else the
    highest-scoring ones (stable order, so ties resolve the same way every time), in source order."""
    choices = {}
    for dim in plan.dimensions:
        if dim.target >= dim.source or dim.kind not in SCORED_KINDS:
            continue  # ids, grids and layers keep the plan's own rules
        if getattr(dim, "aligned", None) is not None:
            choices[dim.name] = torch.as_tensor(dim.aligned).long()
            continue
        order = torch.sort(scores[dim.name], descending=True, stable=True).indices
        choices[dim.name] = order[: dim.target].sort().values
    for dim in plan.dimensions:  # grouped-query attention: query heads stay with the key/value heads kept
        kv_name = dim.name.replace(".heads", ".kv_heads")
        if dim.kind == "heads" and getattr(dim, "kv", None) is not None and (dim.name in choices or kv_name in choices):
            kv_s, kv_t = dim.kv.source, dim.kv.target  # the key/value heads kept (all of them when their count is unchanged)
            kept = choices[kv_name] if kv_name in choices else torch.arange(kv_s)
            choices[dim.name] = grouped_heads(kept, dim.source // kv_s, dim.target // kv_t, select_indices)
    return choices


# ----------------------------------------------------------------------------------------------- depth

@torch.no_grad()
def layer_influence(model: nn.Module, prefix: str, inputs: Batch | Batches) -> Tensor:
    """Per layer of the stack ``prefix``: ``1 - cos(input, output)`` of the hidden state, averaged over
    tokens (ShortGPT's block influence). A layer that barely turns the hidden state can go first."""
    layers = dict(model.named_modules())[prefix]
    found: dict[int, list[float]] = {}  # layer -> [sum over tokens, tokens] of its first call per forward
    seen: set[int] = set()

    def hook(i: int) -> Callable:
        def fn(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            if i in seen:
                return
            seen.add(i)
            x = args[0] if args else next(iter(kwargs.values()))
            y = output[0] if isinstance(output, tuple) else output
            cos = torch.cosine_similarity(x.float(), y.float(), dim=-1)
            total = found.setdefault(i, [0.0, 0])
            total[0] += float((1 - cos).double().sum())
            total[1] += cos.numel()
        return fn

    hooked_pass(model, inputs, [(layer, hook(i)) for i, layer in enumerate(layers)], with_kwargs=True,
                before_batch=seen.clear)
    return torch.tensor([found[i][0] / found[i][1] if i in found else 0.0 for i in range(len(layers))])


def choose_layers(how: str, source_layers: int, target_layers: int, influence: Tensor | None = None) -> Tensor:
    """Source layer indices a stack of ``target_layers`` keeps: the first ones, evenly spread ones, or
    the most influential ones (in source order)."""
    if how == "first":
        return torch.arange(target_layers)
    if how == "uniform":
        return select_indices(source_layers, target_layers)
    if how == "importance":
        if influence is None:
            raise ValueError("layer choice 'importance' needs calibration data")
        order = torch.sort(influence, descending=True, stable=True).indices
        return order[:target_layers].sort().values
    raise ValueError(f"unknown layer choice {how!r}; use one of {', '.join(LAYER_CHOICES)}")


def layer_name_map(kept: dict[str, Tensor]) -> Callable[[str], str]:
    """Target module/tensor name -> the source name it came from, given the kept layers per stack."""
    def rename(name: str) -> str:
        for prefix, keep in kept.items():
            if name.startswith(prefix + "."):
                index, _, rest = name[len(prefix) + 1:].partition(".")
                if index.isdigit():
                    source = f"{prefix}.{int(keep[int(index)])}"
                    return f"{source}.{rest}" if rest else source
        return name
    return rename
