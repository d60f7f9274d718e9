"""Mixture-of-experts layers stored as 3-D tensors (transformers' ``*Experts`` modules: Mixtral,
Qwen2-MoE, ...): every expert's FFN units, the expert count and the router.

Each expert is its own FFN: unit j of expert 1 and unit j of expert 2 were trained apart and have
nothing in common, so the plan gives **each expert its own FFN dimension** (the 3-D tensor is split into
one virtual tensor per expert, ``gate_up_proj#e3``, like a fused projection). A choice shared by all
experts would have to keep the same unit indices in every expert; per-expert choices are free to keep
each expert's own best units, so they keep at least as much (measured in the README). When the expert
count itself changes, the experts are one ``experts`` dimension (router rows and the experts' first
axis, whole experts kept) and their units share one choice.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .fused import Fused, FusedPart

__all__ = ["ExpertTensor", "EXPERT_TENSORS", "ROUTER_NAMES", "expert_modules", "expert_splits"]


@dataclass(frozen=True)
class ExpertTensor:
    """One parameter of an experts module: (experts, ...) with the FFN units on ``units`` (``parts``
    blocks: gate|up) and the residual on ``stream``; ``transposed`` experts swap the two."""

    units: int
    stream: int | None
    parts: int = 1


# transformers' *Experts modules (attribute ``num_experts``); is_transposed=True swaps units and stream
EXPERT_TENSORS: dict[str, tuple[ExpertTensor, ExpertTensor]] = {
    "gate_up_proj": (ExpertTensor(1, 2, 2), ExpertTensor(2, 1, 2)),  # (E, 2I, H): gate, up = chunk(2)
    "up_proj": (ExpertTensor(1, 2), ExpertTensor(2, 1)),  # experts without a gate
    "down_proj": (ExpertTensor(2, 1), ExpertTensor(1, 2)),  # (E, H, I)
    "gate_up_proj_bias": (ExpertTensor(1, None, 2), ExpertTensor(1, None, 2)),
    "up_proj_bias": (ExpertTensor(1, None), ExpertTensor(1, None)),
}
ROUTER_NAMES = ("gate", "router")  # the sibling that scores experts: weight (E, H)


def expert_modules(modules: dict[str, nn.Module]) -> dict[str, tuple[int, dict[str, ExpertTensor]]]:
    """Experts modules: prefix -> (expert count, parameter name -> its layout)."""
    found = {}
    for prefix, module in modules.items():
        count = getattr(module, "num_experts", None)
        own = dict(module.named_parameters(recurse=False))
        layouts = {n: EXPERT_TENSORS[n][bool(getattr(module, "is_transposed", False))] for n in own
                   if n in EXPERT_TENSORS and own[n].dim() >= 2 and own[n].shape[0] == count}
        if isinstance(count, int) and layouts:
            found[prefix] = (count, layouts)
    return found


def expert_splits(source: dict[str, nn.Module], target: dict[str, nn.Module]) -> dict[str, Fused]:
    """Per-expert virtual tensors for the experts modules whose expert count stays."""
    out = {}
    tgt = expert_modules(target)
    for prefix, (count, layouts) in expert_modules(source).items():
        if prefix not in tgt or tgt[prefix][0] != count:
            continue
        for name in layouts:
            tensor = f"{prefix}.{name}"
            parts = tuple(FusedPart(f"e{e}", torch.tensor([e]), torch.tensor([e])) for e in range(count))
            out[tensor] = Fused(tensor, 0, "experts", parts)
    return out


def router_of(prefix: str, count: int, tensors: dict[str, Tensor]) -> list[str]:
    """The router's tensors with one row per expert (``mlp.gate.weight`` beside ``mlp.experts``)."""
    parent = prefix.rpartition(".")[0]
    return [f"{parent}.{r}.{leaf}" for r in ROUTER_NAMES for leaf in ("weight", "bias")
            if f"{parent}.{r}.{leaf}" in tensors and tensors[f"{parent}.{r}.{leaf}"].shape[0] == count]
