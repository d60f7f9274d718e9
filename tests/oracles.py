"""Exact references for a shrink: the source model with the dropped units' *readers* zeroed.

Cutting FFN units with ``first`` must give exactly the source model whose dropped units no longer
reach the output: their columns in every layer that reads them (the down projection's input axis,
an expert's ``down_proj``) set to zero. Cutting heads with ``first`` must give the source with the
dropped heads' columns of the output projection zeroed. These hold whatever the activation, so they
test that every tensor axis of a dimension got the same choice (q, k, v of a fused projection, gate and
up of a fused FFN, each expert).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from interprune.plan import Kind, Plan
from interprune.plan.fused import PART_MARK, real_name
from interprune.plan.rules import module_type


def _reader_axis(model: nn.Module, name: str) -> int | None:
    """The input axis of the layer that owns weight ``name`` (None for biases, norms, outputs)."""
    base = real_name(name)
    owner, _, leaf = base.rpartition(".")
    module = dict(model.named_modules()).get(owner)
    if leaf == "weight":
        kind = module_type(module)
        return kind.input if kind is not None else None
    if leaf == "down_proj" and PART_MARK in name:  # an expert's down projection: (1, H, I)
        return 1 if getattr(module, "is_transposed", False) else 2
    return None


def _zero(model: nn.Module, plan: Plan, name: str, axis: int, positions: Tensor) -> None:
    """Zero ``positions`` along ``axis`` of tensor ``name`` (a part of a fused tensor: in its place)."""
    state = model.state_dict()
    base = real_name(name)
    value = state[base]
    fused = plan.fused.get(base)
    if fused is not None:
        part = next(p for p in fused.parts if fused.part_name(p) == name)
        if fused.axis == axis:
            positions = part.source[positions]
        else:
            value = value.index_select(fused.axis, part.source)  # a copy: written back below
    with torch.no_grad():
        value.index_fill_(axis, positions, 0.0)
        if fused is not None and fused.axis != axis:
            state[base].index_copy_(fused.axis, part.source, value)


def zero_dropped(source: nn.Module, plan: Plan, choices: dict[str, list[int]], kinds: tuple[Kind, ...]) -> nn.Module:
    """A copy of ``source`` with the units each dimension of ``kinds`` drops zeroed where they are read."""
    import copy

    model = copy.deepcopy(source)
    for dim in plan.dimensions:
        if dim.kind not in kinds:
            continue
        dropped = torch.tensor(sorted(set(range(dim.source)) - set(choices[dim.name])), dtype=torch.long)
        if not dropped.numel():
            continue
        for ax in dim.axes:
            if _reader_axis(model, ax.tensor) != ax.axis:
                continue
            size = dim.source * ax.parts * ax.group
            grid = torch.arange(size).reshape(ax.parts, dim.source, ax.group)
            _zero(model, plan, ax.tensor, ax.axis, grid[:, dropped, :].reshape(-1))
    return model


def perturbed(model: nn.Module, seed: int = 0) -> nn.Module:
    """``model`` with every float parameter moved by seeded noise: zero-initialised biases and layer scales
    would otherwise hide a wrong choice."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.is_floating_point():
                p.add_(torch.randn(p.shape, generator=gen) * 0.05)
    return model


def random_inputs(model: nn.Module, inputs: dict[str, Tensor], seed: int = 1) -> dict[str, Tensor]:
    """The dummy inputs' shapes with seeded random values (token ids kept in the vocabulary)."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for key, value in inputs.items():
        if value.is_floating_point():
            out[key] = torch.randn(value.shape, generator=gen)
        elif key == "input_ids":
            text = getattr(model.config, "text_config", None) or model.config
            out[key] = torch.randint(0, getattr(text, "vocab_size", 4), (1, 6), generator=gen)
        else:
            out[key] = value
    return out


def outputs(model: nn.Module, inputs: dict[str, Tensor]) -> dict[str, Tensor]:
    with torch.no_grad():
        out = model.eval()(**inputs)
    return {k: v for k, v in out.items() if isinstance(v, Tensor) and v.is_floating_point()}


def max_error(a: dict[str, Tensor], b: dict[str, Tensor]) -> float:
    """Largest difference over the outputs both models have with equal shapes."""
    errors = [float((a[k] - b[k]).abs().max()) for k in a if k in b and a[k].shape == b[k].shape]
    assert errors, "no comparable outputs"
    return max(errors)
