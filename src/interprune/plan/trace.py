"""Which tensor axes the model's computation links: a forward pass on the meta device, no memory.

Sizes alone cannot tell a residual stream from an FFN of the same width. Running the model once on the
meta device with every parameter's last axis labelled, a forward hook on each Linear, Conv1D, Embedding
and norm, and a function mode that follows elementwise operations (adds of the residual, activations,
gates, dropout, concatenation of tokens), links the axes that really meet: a layer's input axis to
whatever produced its input, an add's operands to each other. Anything the trace cannot follow (a view
into heads, a convolution's channels) is left to the other rules. Returns None when the model cannot run
on the meta device; the plan then groups by sizes as before.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from .experts import expert_modules
from ..hf.inputs import dummy_inputs
from .rules import is_norm_like, module_type

__all__ = ["trace_links"]

# operations whose output's last axis is the same units as each input's last axis of equal size
ELEMENTWISE = {"add", "sub", "mul", "div", "__add__", "__radd__", "__iadd__", "__sub__", "__rsub__", "__mul__",
               "__rmul__", "__imul__", "__truediv__", "add_", "mul_", "where", "silu", "gelu", "relu", "tanh",
               "sigmoid", "dropout", "contiguous", "to", "clone", "float", "type_as", "masked_fill", "cat",
               "gelu_new", "softplus", "hardtanh", "leaky_relu", "elu", "mish", "clamp", "neg", "__neg__", "abs"}


class _Links:
    def __init__(self) -> None:
        self.parent: dict[Any, Any] = {}
        self.labels: dict[int, Any] = {}
        self.alive: list[Tensor] = []  # keeps labelled tensors alive so their ids stay theirs

    def find(self, node: Any) -> Any:
        self.parent.setdefault(node, node)
        while self.parent[node] != node:
            self.parent[node] = self.parent[self.parent[node]]
            node = self.parent[node]
        return node

    def union(self, a: Any, b: Any) -> Any:
        ra, rb = self.find(a), self.find(b)
        self.parent[rb] = ra
        return ra

    def label(self, tensor: Any) -> Any:
        return self.labels.get(id(tensor)) if isinstance(tensor, Tensor) else None

    def set(self, tensor: Any, node: Any) -> None:
        if isinstance(tensor, Tensor) and tensor.dim() > 0:
            self.labels[id(tensor)] = node
            self.alive.append(tensor)


class _Follow(TorchFunctionMode):
    def __init__(self, links: _Links) -> None:
        super().__init__()
        self.links = links

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if getattr(func, "__name__", "") in ("chunk", "split") and isinstance(out, (tuple, list)):
            self._pieces(args, kwargs or {}, out)  # a fused gate|up output cut in halves: each half its units
            return out
        if getattr(func, "__name__", "") in ELEMENTWISE and isinstance(out, Tensor) and out.dim() > 0:
            flat = [a for a in list(args) + list((kwargs or {}).values()) for a in (a if isinstance(a, (list, tuple)) else [a])]
            nodes = [self.links.label(a) for a in flat if isinstance(a, Tensor) and a.dim() > 0
                     and a.shape[-1] == out.shape[-1] and self.links.label(a) is not None]
            if nodes:
                for node in nodes[1:]:
                    self.links.union(nodes[0], node)
                self.links.set(out, nodes[0])
        return out


    def _pieces(self, args: tuple, kwargs: dict, out: tuple) -> None:
        source = args[0] if args else None
        node = self.links.label(source)
        dim = kwargs.get("dim", args[2] if len(args) > 2 else 0)
        if node is None or not isinstance(dim, int) or dim % source.dim() != source.dim() - 1:
            return
        for piece in out:
            self.links.set(piece, node)


def _hook(links: _Links, names: dict[int, str]):
    def fn(module: nn.Module, args: tuple, output: Any) -> None:
        x = args[0] if args and isinstance(args[0], Tensor) else None
        kind = module_type(module)
        weight = getattr(module, "weight", None)
        wname = names.get(id(weight))
        if wname is None or not isinstance(output, Tensor):
            return
        bias = names.get(id(getattr(module, "bias", None)))
        if kind is not None and kind.name in ("linear", "conv1d"):
            if x is not None and links.label(x) is not None:
                links.union(links.label(x), (wname, kind.input))
            if bias:
                links.union((wname, kind.output), (bias, 0))
            links.set(output, (wname, kind.output))
        elif kind is not None and kind.ids:
            links.set(output, (wname, 1))
        elif is_norm_like(module) and weight.dim() == 1 and x is not None and x.shape[-1] == weight.shape[0]:
            node = links.union(links.label(x), (wname, 0)) if links.label(x) is not None else links.find((wname, 0))
            if bias:
                links.union(node, (bias, 0))
            links.set(output, node)
    return fn


def _inputs(model: nn.Module) -> dict[str, Tensor]:
    """The smallest inputs the model's forward takes (``hf.inputs``), on the meta device."""
    return {k: v.to("meta") for k, v in dummy_inputs(model).items()}


def _stream(hidden: Tensor, *args: Any, **kwargs: Any) -> Tensor:
    """An experts module's output for the trace: the residual stream it reads, scaled to nothing."""
    return hidden * 0


def trace_links(model: nn.Module) -> dict[tuple[str, int], Any] | None:
    """(parameter, axis) -> a class id, for the axes one meta-device forward pass links; None if it cannot run."""
    config = getattr(model, "config", None)
    if config is None:
        return None
    try:
        with torch.device("meta"):
            meta = type(model)(config).eval()
    except Exception:
        return None
    modules = dict(meta.named_modules())
    for module in expert_modules(modules):  # experts have their own rule; their grouped
        modules[module].forward = _stream  # matmuls cannot run on meta: pass the stream on
    links = _Links()
    names = {id(p): n for n, p in meta.named_parameters(remove_duplicate=False)}
    for name, p in meta.named_parameters(remove_duplicate=False):
        if p.dim() > 0:
            links.set(p, (name, p.dim() - 1))
    handles = [m.register_forward_hook(_hook(links, names)) for m in meta.modules()]
    try:
        with torch.no_grad(), _Follow(links):
            meta(**_inputs(meta))
    except Exception:
        return None
    finally:
        for h in handles:
            h.remove()
    return {node: links.find(node) for node in list(links.parent)}
