"""Calibration statistics of mixture-of-experts layers: each expert scored on the tokens routed to it.

A hook on every experts module (transformers' ``*Experts``: ``forward(hidden, top_k_index,
top_k_weights)``) recomputes, for each expert, its hidden units on exactly the tokens the router sent
to it, weighted as the layer weights them, and scores unit j as Wanda does for the down projection's
input: ``E[(w h_j)^2] * |down[:, j]|^2``. An expert no token reached scores 0 everywhere (its units
are then kept in order). Kept apart from the dense statistics (``importance``) so that a streaming
calibration engine can run it block by block.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor, nn

from ..plan.experts import expert_modules
from ..plan.fused import PART_MARK

from ..walk import Batches, hooked_pass

__all__ = ["expert_scores"]


def _hook(energy: dict[str, Tensor], prefix: str) -> Callable:
    def fn(module: nn.Module, args: tuple, output: Any) -> None:
        hidden, index, weights = args[0], args[1], args[2]
        hidden = hidden.reshape(-1, hidden.shape[-1])
        total = energy.setdefault(prefix, torch.zeros(module.num_experts, module.down_proj.shape[-1],
                                                       dtype=torch.float64, device=hidden.device))
        for e in range(module.num_experts):
            token, slot = torch.where(index == e)
            if not token.numel():
                continue
            weight = module.gate_up_proj[e].to(hidden.dtype)  # a half-precision source computes in float32
            gate, up = nn.functional.linear(hidden[token], weight).chunk(2, dim=-1)
            units = module.act_fn(gate) * up * weights[token, slot, None]
            total[e] += units.double().pow(2).sum(0)
    return fn


def _supported(module: nn.Module) -> bool:
    """Concatenated gate|up experts in (E, 2I, H) layout, the transformers default."""
    return (getattr(module, "is_concatenated", True) and not getattr(module, "is_transposed", False)
            and getattr(module, "has_gate", True) and hasattr(module, "act_fn")
            and isinstance(getattr(module, "gate_up_proj", None), Tensor))


@torch.no_grad()
def expert_scores(model: nn.Module, plan: Any, inputs: dict[str, Any] | Batches,
                  rename: Callable[[str], str] = lambda name: name) -> dict[str, Tensor]:
    """Per expert FFN dimension of ``plan``: its units' routed-activation scores on ``inputs``."""
    owners = {}
    for dim in plan.dimensions:
        if dim.kind != "ffn":  # the residual stream reads every expert's down projection too (its other axis)
            continue
        for axis in dim.axes:
            base, _, part = axis.tensor.partition(PART_MARK)
            if base.endswith(".down_proj") and part.startswith("e"):
                owners[dim.name] = (rename(base.rpartition(".")[0]), int(part[1:]))
    named = dict(model.named_modules())
    prefixes = {p for p, _ in owners.values() if p in expert_modules(named) and _supported(named[p])}
    energy: dict[str, Tensor] = {}
    if not prefixes:  # no routed experts: no pass over the data
        return {}
    hooked_pass(model, inputs, [(named[p], _hook(energy, p)) for p in prefixes])  # sums over mini-batches
    scores = {}
    for name, (prefix, e) in owners.items():
        if prefix in energy:
            down = named[prefix].down_proj[e].double()
            scores[name] = (energy[prefix][e] * down.pow(2).sum(0)).float().cpu()  # choices live on the CPU
    return scores
