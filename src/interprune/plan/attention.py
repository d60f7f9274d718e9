"""How an attention module splits its projections into heads, read from the module itself."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from torch import Tensor, nn

from .fused import PART_MARK
from .rules import RULES, int_attr, is_norm_like, module_type

__all__ = ["Role", "Projection", "AttentionLayout", "attention_layout"]


class Role(StrEnum):
    QUERY = "q"  # query heads (also values and the output projection when there is no grouping)
    KEY_VALUE = "kv"  # key/value heads
    EXTRA = "extra"  # another per-head axis (deformable offsets, relative-position biases)
    WIDTH = "width"  # one head's width only, shared by every head (Qwen3/Gemma3 q_norm and k_norm)


@dataclass(frozen=True)
class Projection:
    """One tensor axis of an attention module laid out as heads x width, ``parts`` times (fused q|k|v)."""

    tensor: str
    axis: int
    role: Role
    parts: int = 1


@dataclass(frozen=True)
class AttentionLayout:
    heads: int
    head_dim: int
    kv_heads: int
    projections: tuple[Projection, ...]


def _out_axis(module: nn.Module) -> int | None:
    kind = module_type(module)
    return kind.output if kind is not None else None


def _out_features(module: nn.Module) -> int:
    return int(module.weight.shape[_out_axis(module)])


def _in_axis(module: nn.Module) -> int:
    kind = module_type(module)
    return kind.input if kind is not None and kind.input is not None else 1


def _output_projection(prefix: str, children: dict[str, nn.Module], modules: dict[str, nn.Module]):
    """The module that reads the heads back (``o_proj``...), a child or a sibling (BERT's output.dense)."""
    name = next((n for n in RULES.output_names if n in children), None)
    if name is not None:
        return children.pop(name), f"{prefix}.{name}"
    parent = prefix.rpartition(".")[0]
    for rel in RULES.output_elsewhere:
        candidate = modules.get(f"{parent}.{rel}")
        if candidate is not None and _out_axis(candidate) is not None:
            return candidate, f"{parent}.{rel}"
    return None, None


def attention_layout(prefix: str, module: nn.Module, modules: dict[str, nn.Module],
                     tensors: dict[str, Tensor]) -> AttentionLayout | None:
    """Heads, head width, key/value heads and the projections of an attention module, or None.

    Read from the module's own attributes where it has them (``num_heads``, ``head_dim``, ...), else
    from its projections' widths. ``tensors`` holds the model's tensors with fused projections already
    split into their parts (``qkv_proj.weight#q``...), which count as projections of their own.
    """
    heads, head_dim = int_attr(module, RULES.heads_attrs), int_attr(module, RULES.head_dim_attrs)
    if heads is None and head_dim is None:
        return None
    children = {n: c for n, c in module.named_children()
                if _out_axis(c) is not None and getattr(c, "weight", None) is not None}
    fused = _fused_parts(prefix, children, tensors)
    if not children and not fused:
        return None
    out_module, out_path = _output_projection(prefix, children, modules)
    plain = [n for n in children if not any(t.startswith(f"{prefix}.{n}.") for t in fused)]
    q_name = next((n for n in plain if RULES.query_names.search(n)), None)
    k_name = next((n for n in plain if RULES.key_names.search(n)), None)
    fused_width = lambda part: next((int(t.shape[a]) for n, (t, a) in fused.items() if n.endswith(PART_MARK + part)
                                     and n.rpartition(PART_MARK)[0].endswith("weight")), None)
    if q_name is not None:
        q_width = _out_features(children[q_name])
    elif fused_width("q") is not None:
        q_width = fused_width("q")
    elif out_module is not None:
        q_width = int(out_module.weight.shape[_in_axis(out_module)])
    else:
        return None
    if heads is None:
        heads = q_width // head_dim
    if head_dim is None:
        head_dim = q_width // heads if heads else None
    if not heads or not head_dim or heads * head_dim != q_width:
        return None
    k_width = _out_features(children[k_name]) if k_name else fused_width("k") or q_width
    kv_heads = k_width // head_dim if k_width % head_dim == 0 else heads
    projs = _projections(prefix, module, {n: children[n] for n in plain}, fused, q_width, k_width, heads)
    if out_module is not None:
        projs.append(Projection(f"{out_path}.weight", _in_axis(out_module), Role.QUERY))
    return AttentionLayout(heads, head_dim, kv_heads, tuple(projs))


def _fused_parts(prefix: str, children: dict[str, nn.Module], tensors: dict[str, Tensor]) -> dict[str, tuple]:
    """Parts of fused q|k|v tensors of this module (its own or its children's): name -> (tensor, axis)."""
    found = {}
    for name, tensor in tensors.items():
        base, mark, part = name.partition(PART_MARK)
        if not mark or part not in ("q", "k", "v"):
            continue
        owner, _, leaf = base.rpartition(".")
        child = owner.rpartition(".")[2] if owner.rpartition(".")[0] == prefix else None
        if owner == prefix and tensor.dim() >= 1:  # nn.MultiheadAttention's in_proj_weight / in_proj_bias
            found[name] = (tensor, 0)
        elif child in children:
            found[name] = (tensor, _out_axis(children[child]) if leaf == "weight" else 0)
    return found


def _projections(prefix: str, module: nn.Module, children: dict[str, nn.Module], fused: dict[str, tuple],
                 q_width: int, k_width: int, heads: int) -> list[Projection]:
    """Each projection's output axis (and bias) with its role, then per-head parameters."""
    role = lambda width: Role.QUERY if width == q_width else Role.KEY_VALUE if width == k_width else Role.EXTRA
    projs: list[Projection] = []
    for name, child in children.items():
        width, axis = _out_features(child), _out_axis(child)
        projs.append(Projection(f"{prefix}.{name}.weight", axis, role(width)))
        if getattr(child, "bias", None) is not None:
            projs.append(Projection(f"{prefix}.{name}.bias", 0, role(width)))
    for name, (tensor, axis) in fused.items():
        projs.append(Projection(name, axis, role(int(tensor.shape[axis]))))
    for name, child in module.named_children():  # norms over one head's width
        if is_norm_like(child):
            projs.extend(Projection(f"{prefix}.{name}.{leaf}", 0, Role.WIDTH)
                         for leaf, _ in child.named_parameters(recurse=False))
    for name, tensor in module.named_parameters():  # relative-position biases: one column per head
        if "." in name and name.split(".")[0] in children or tensor.dim() < 2 or f"{prefix}.{name}" in _bases(fused):
            continue
        if tensor.shape[-1] == heads:
            projs.append(Projection(f"{prefix}.{name}", tensor.dim() - 1, Role.EXTRA))
    return projs


def _bases(fused: dict[str, tuple]) -> set[str]:
    return {n.partition(PART_MARK)[0] for n in fused}
