"""Derivation: one function per rule, run in a fixed order over a :class:`Context`; the first rule to
claim a tensor axis wins.

The order (:data:`STEPS`) is part of the rules, and each step says why it comes where it does.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Callable

from torch import nn

from .attention import Role, attention_layout
from .context import Context, block_of, owner
from .fused import real_name
from .experts import expert_modules, router_of
from .encodings import rotary_alignment, sine_alignment
from .rules import RULES, family_rules, is_norm_like, module_type
from .types import Axis, Dimension, Grid, Kind, KeyValueHeads, Plan

__all__ = ["make_plan", "STEPS", "Step"]


@dataclass(frozen=True)
class Step:
    rule: Callable[[Context], None]
    why: str


def layers(ctx: Context) -> None:
    """Stacks (``ModuleList``) with another number of layers."""
    src_lists = {n: len(m) for n, m in ctx.src_mods.items() if isinstance(m, nn.ModuleList)}
    for name in sorted(ctx.lists):
        n_t, n_s = len(ctx.tgt_mods[name]), src_lists.get(name)
        if n_s is not None and n_s != n_t:
            ctx.add(Dimension(name, Kind.LAYERS, n_s, n_t))


def stage_depths(ctx: Context) -> None:
    """Backbone stages whose layers sit in a ``Sequential`` (Hugging Face ResNet, ConvNeXt: ``RULES.stage_layers``)
    with another number of layers: a layer stack like any other."""
    for name, module in ctx.tgt_mods.items():
        source = ctx.src_mods.get(name)
        if (isinstance(module, nn.Sequential) and isinstance(source, nn.Sequential) and len(source) != len(module)
                and RULES.stage_layers.search(name)):
            ctx.add(Dimension(name, Kind.LAYERS, len(source), len(module)))


def attention(ctx: Context) -> None:
    """Heads, head width and key/value heads of every attention module, from the module's own layout."""
    for prefix, module in ctx.src_mods.items():
        target = ctx.tgt_mods.get(prefix)
        if target is None:
            continue
        src = attention_layout(prefix, module, ctx.src_mods, ctx.src)
        tgt = attention_layout(prefix, target, ctx.tgt_mods, ctx.tgt)
        if src is None or tgt is None:
            continue
        heads, width, kv = _head_axes(ctx, src, tgt)
        if width:
            dim = Dimension(f"{prefix}.head_dim", Kind.HEAD_DIM, src.head_dim, tgt.head_dim, width)
            dim.aligned = rotary_alignment(ctx.source, src.head_dim, tgt.head_dim)
            ctx.add(dim)
        if heads:
            grouped = (src.kv_heads != src.heads and src.kv_heads and src.heads % src.kv_heads == 0
                       and tgt.kv_heads and tgt.heads % tgt.kv_heads == 0)
            kv_heads = KeyValueHeads(src.kv_heads, tgt.kv_heads) if grouped else None
            ctx.add(Dimension(f"{prefix}.heads", Kind.HEADS, src.heads, tgt.heads, heads, kv=kv_heads))
        if kv:
            ctx.add(Dimension(f"{prefix}.kv_heads", Kind.KV_HEADS, src.kv_heads, tgt.kv_heads, kv))


def _head_axes(ctx: Context, src, tgt) -> tuple[list[Axis], list[Axis], list[Axis]]:
    """The axes of (query) heads, of head width and of key/value heads; all empty when the shapes
    disagree with the module's attributes (the size rules then decide)."""
    heads, width, kv = [], [], []
    for proj in src.projections:
        tensor, axis, parts = proj.tensor, proj.axis, proj.parts
        if tensor not in ctx.tgt or ctx.src[tensor].dim() != ctx.tgt[tensor].dim():
            continue
        n_s, n_t = ctx.src[tensor].shape[axis], ctx.tgt[tensor].shape[axis]
        if proj.role == Role.WIDTH:
            if (n_s, n_t) == (src.head_dim, tgt.head_dim) and n_s != n_t:
                width.append(Axis(tensor, axis))
            continue
        if proj.role == Role.EXTRA:  # a per-head axis that is not q/k/v (offsets, relative biases)
            if src.heads != tgt.heads and n_s % src.heads == 0 and n_t == tgt.heads * (n_s // src.heads):
                heads.append(Axis(tensor, axis, 1, n_s // src.heads))
            continue
        units_s, units_t = (src.kv_heads, tgt.kv_heads) if proj.role == Role.KEY_VALUE else (src.heads, tgt.heads)
        if n_t != parts * units_t * tgt.head_dim or n_s != parts * units_s * src.head_dim:
            return [], [], []
        if units_s != units_t:
            grouped_kv = proj.role == Role.KEY_VALUE and src.kv_heads != src.heads
            (kv if grouped_kv else heads).append(Axis(tensor, axis, parts, src.head_dim))
        if src.head_dim != tgt.head_dim:
            width.append(Axis(tensor, axis, parts * units_s, 1))
    return heads, width, kv


def shared_heads(ctx: Context) -> None:
    """Heads that a per-head bias computed once links across layers (T5's relative position bias) are one
    dimension per stack: every layer must keep the heads the bias keeps."""
    rules = family_rules(getattr(ctx.root_config, "model_type", None)).shared_heads
    for pattern, stack in rules:
        groups: dict[str, list[Dimension]] = {}
        for dim in ctx.dims:
            if dim.kind == Kind.HEADS and re.search(pattern, dim.name):
                groups.setdefault(re.sub(pattern, stack, dim.name), []).append(dim)
        for name, dims in groups.items():
            first, rest = dims[0], dims[1:]
            if any((d.source, d.target) != (first.source, first.target) for d in rest):
                continue
            first.name = f"{name}.self_attention.heads"
            for dim in rest:
                first.axes.extend(dim.axes)
                for a in dim.axes:
                    ctx.claimed[(a.tensor, a.axis)] = first
                ctx.dims.remove(dim)


def experts(ctx: Context) -> None:
    """Mixture-of-experts layers: each expert's FFN units (or, when the expert count changes, one
    ``experts`` dimension over router rows and whole experts, and one FFN choice for all of them)."""
    targets = expert_modules(ctx.tgt_mods)
    for prefix, (count, layouts) in expert_modules(ctx.src_mods).items():
        if prefix not in targets:
            continue
        t_count = targets[prefix][0]
        if t_count != count:
            axes = [Axis(f"{prefix}.{n}", 0) for n in layouts] + [Axis(r, 0) for r in router_of(prefix, count, ctx.src)]
            ctx.add(Dimension(f"{prefix}", Kind.EXPERTS, count, t_count, axes))
        per_expert = [f"#e{e}" for e in range(count)] if t_count == count else [""]
        for e, suffix in enumerate(per_expert):
            found = [(f"{prefix}.{n}{suffix}", spec) for n, spec in layouts.items()]
            changes = {name: ctx.shape_changes(name, spec.units) for name, spec in found}
            sizes = {(c[0] // spec.parts, c[1] // spec.parts) for (name, spec) in found if (c := changes[name])}
            if len(sizes) != 1:
                continue
            (s, t), = sizes
            label = f"{prefix}.{e}.ffn" if suffix else f"{prefix}.ffn"
            axes = [Axis(name, spec.units, spec.parts) for name, spec in found if changes[name]]
            ctx.add(Dimension(label, Kind.FFN, s, t, axes))


def ids(ctx: Context) -> None:
    """Rows of id tables: vocabulary, learned 1-D positions, object queries; 2-D position grids and
    relative-position tables."""
    io = _io_embeddings(ctx)
    groups: dict[tuple, Dimension] = {}
    for name, axis, s, t in ctx.unclaimed():
        prefix, _ = owner(name)
        grid = _grid(ctx, name, axis, s, t)
        scope = ctx.scope(name)
        if grid is not None:
            label = ("relative_position_bias" if grid.relative else
                     f"{scope}.position_grid" if scope else "position_grid")
            key = ("grid", grid)
            dim = groups.get(key) or groups.setdefault(key, ctx.add(Dimension(label, Kind.GRID, s, t, grid=grid)))
            ctx.claim(dim, Axis(name, axis))
            continue
        found = _id_kind(ctx, name, axis, io)
        if found is None:
            continue
        kind, label = found
        label = f"{scope}.{label}" if scope and kind != Kind.POSITIONS else label
        key = (kind, label, s, t)
        dim = groups.get(key) or groups.setdefault(key, ctx.add(Dimension(label, kind, s, t)))
        ctx.claim(dim, Axis(name, axis))
        bias = f"{prefix}.bias"  # an output embedding's bias follows its rows
        if prefix in io and ctx.shape_changes(bias, 0) == (s, t):
            ctx.claim(dim, Axis(bias, 0))


def _io_embeddings(ctx: Context) -> set[str]:
    """Names of the model's own input and output embedding modules."""
    io = set()
    for getter in ("get_input_embeddings", "get_output_embeddings"):
        try:
            module = getattr(ctx.source, getter)()
        except (AttributeError, NotImplementedError):
            module = None
        if module is not None:
            io.update(n for n, m in ctx.src_mods.items() if m is module)
    return io


def _id_kind(ctx: Context, name: str, axis: int, io: set[str]) -> tuple[Kind, str] | None:
    """(kind, label) of an id table's rows, or None when ``name``'s axis is not one."""
    prefix, _ = owner(name)
    module = ctx.src_mods.get(prefix)
    kind = module_type(module)
    if axis != 0 or not (kind is not None and kind.ids or prefix in io):
        return None
    if prefix in io or RULES.vocab_names.search(name):
        return Kind.VOCAB, ("token_types" if "token_type" in name else "vocab")
    if RULES.query_table_names.search(name):
        return Kind.QUERIES, "queries"
    if RULES.position_names.search(name):
        return Kind.POSITIONS, prefix
    return None


def _grid(ctx: Context, name: str, axis: int, s: int, t: int) -> Grid | None:
    """The 2-D grid a position table's axis holds (from ``image_size``/``patch_size``), or the 2-D table
    of a relative-position bias, or None."""
    grid = _position_grid(ctx, name, s, t) if RULES.position_names.search(name) else None
    if grid is None and RULES.relative_tables.search(name) and axis == 0:
        r_s, r_t = math.isqrt(s), math.isqrt(t)
        if r_s * r_s == s and r_t * r_t == t:
            grid = Grid((r_s, r_s), (r_t, r_t), relative=True)
    return grid


def _grid_shape(config) -> tuple[int, int] | None:
    image, patch = getattr(config, "image_size", None), getattr(config, "patch_size", None)
    if image is None or patch is None:
        return None
    image = (image, image) if isinstance(image, int) else tuple(image)
    patch = (patch, patch) if isinstance(patch, int) else tuple(patch)
    if len(image) != 2 or len(patch) != 2:
        return None
    return image[0] // patch[0], image[1] // patch[1]


def _position_grid(ctx: Context, name: str, s: int, t: int) -> Grid | None:
    config = ctx.config_of(name)
    gs, gt = _grid_shape(config), _grid_shape(ctx.target_config_of(name) or config)
    if gs is None or gt is None:
        return None
    extra_s, extra_t = s - gs[0] * gs[1], t - gt[0] * gt[1]
    if extra_s != extra_t or extra_s < 0:
        return None
    after_field = family_rules(getattr(config, "model_type", None)).grid_extra_after
    after = int(getattr(config, after_field, 0)) if after_field else 0
    return Grid(gs, gt, extra_s - after, after)


@dataclass
class _Changed:
    """One changed axis the structural rules left over, as the size rule sees it."""

    tensor: str
    axis: int
    source: int  # per part
    target: int
    parts: int
    known: bool  # its module is a type of MODULE_TYPES or a norm
    shared: bool  # outside every layer, or in a norm: its size meets other layers' (global)
    meets: bool = False  # a norm's or an embedding's own axis: it meets the whole stream, whatever its size
    trace: object = None  # the class of axes a meta-device trace links it with, if any


def _leftovers(ctx: Context) -> list[_Changed]:
    split = {}
    for name, axis, s, t in ctx.changed():
        for rule in RULES.parts:
            if rule.axis == axis and re.search(rule.pattern, name) and s % rule.parts == 0 and t % rule.parts == 0:
                split[(name, axis)] = rule.parts
    out = []
    for name, axis, s, t in ctx.unclaimed():
        if not ctx.src[name].is_floating_point():
            continue
        module = ctx.src_mods.get(owner(name)[0])
        if _grouped_input(module, axis):
            ctx.reasons[real_name(name)] = (f"grouped convolution (groups={module.groups}): each output channel reads "
                                            f"only its own group's channels, which one choice per axis cannot index")
            continue
        parts = split.get((name, axis), 1)
        kind = module_type(module)
        known = kind is not None or is_norm_like(module)
        # a norm or an embedding meets the whole stream; so does a layer outside every block, but only
        # where its size is the stream's (a head's own MLP outside the blocks is not the stream)
        structural = is_norm_like(module) or (kind is not None and kind.ids)
        anchor = structural or _is_hidden(ctx, name, s, t)
        out.append(_Changed(name, axis, s // parts, t // parts, parts, known, anchor, structural))
    anchored = {(ctx.scope(e.tensor), e.source, e.target) for e in out if e.shared}
    for e in out:
        outside = not block_of(e.tensor, ctx.blocks)
        e.shared = e.shared or (outside and (ctx.scope(e.tensor), e.source, e.target) in anchored)
    _traced(ctx, out)
    # an axis of parts counts as parts only when its part size is a plain global dimension's size
    plain = {(ctx.scope(e.tensor), e.source, e.target) for e in out if e.parts == 1 and e.known and e.shared}
    for e in out:
        if e.parts > 1 and (ctx.scope(e.tensor), e.source, e.target) not in plain:
            e.source, e.target, e.parts = e.source * e.parts, e.target * e.parts, 1
    return out


def _traced(ctx: Context, entries: list[_Changed]) -> None:
    """Where a meta-device trace links the axes of two or more layers, computation decides, not sizes: the
    class is global when one of its axes is a norm's or an embedding's, else it is one layer's own (an FFN of the residual's width stays an FFN). Axes the trace links to no
    other layer (a chain it cannot follow: views, convolutions) are grouped by sizes as before."""
    links = ctx.links()
    if links is None:
        return  # the model cannot run on the meta device: sizes decide, as before
    classes: dict[object, list[_Changed]] = {}
    for e in entries:
        root = links.get((real_name(e.tensor), e.axis))  # the parts of a fused tensor share its trace
        if root is not None:
            classes.setdefault(root, []).append(e)
    for root, members in classes.items():
        if len({owner(m.tensor)[0] for m in members}) > 1:
            shared = any(m.meets for m in members)
            for m in members:
                m.trace, m.shared = root, shared


def _grouped_input(module: nn.Module | None, axis: int) -> bool:
    return isinstance(module, nn.modules.conv._ConvNd) and module.groups > 1 and axis == 1


def sizes(ctx: Context) -> None:
    """The rest: group changed axes by (sub-model, source size, target size); global when they meet
    outside a layer or in a norm (residual stream, conv channels), else one dimension per layer."""
    entries = _leftovers(ctx)
    keys: dict[tuple, dict[str, bool]] = {}
    for e in entries:
        info = keys.setdefault((ctx.scope(e.tensor), e.source, e.target), {"shared": False, "known": False})
        info["shared"] |= e.shared
        info["known"] |= e.known
    made: dict[tuple, Dimension] = {}
    for e in entries:
        scope = ctx.scope(e.tensor)
        info = keys[(scope, e.source, e.target)]
        if not info["known"]:  # only tensors of unknown modules have this size change: say so
            continue
        shared = e.shared if e.trace is not None else info["shared"]
        if shared:
            label, kind = _global_label(ctx, scope, e.source, e.target)
            key = (scope, e.source, e.target)
        else:
            block = block_of(e.tensor, ctx.blocks) or owner(owner(e.tensor)[0])[0]  # else the layer's container
            conv = isinstance(ctx.src_mods.get(owner(e.tensor)[0]), nn.modules.conv._ConvNd)
            kind = Kind.CHANNELS if conv else Kind.FFN
            label, key = f"{block}.{kind.value}", (block, e.source, e.target, e.trace)
            if label in {d.name for d in made.values()} and key not in made:
                label = f"{label}.{e.source}"
        dim = made.get(key)
        if dim is None:
            dim = made[key] = ctx.add(Dimension(label, kind, e.source, e.target))
            if shared:
                dim.aligned = sine_alignment(ctx.source, e.source, e.target)
        ctx.claim(dim, Axis(e.tensor, e.axis, e.parts))


def _is_hidden(ctx: Context, name: str, s: int, t: int) -> bool:
    """Whether (s, t) is a hidden-size field of the configs of ``name``'s sub-model (its stream)."""
    scope = ctx.scope(name)
    config, tconfig = ctx.config_of(scope + ".x"), ctx.target_config_of(scope + ".x")
    return any(isinstance(getattr(config, f, None), int) and (getattr(config, f), getattr(tconfig, f, None)) == (s, t)
               for f in RULES.hidden_fields)


def _global_label(ctx: Context, scope: str, s: int, t: int) -> tuple[str, Kind]:
    """A global dimension is the residual stream when a hidden-size field of the config says so."""
    if _is_hidden(ctx, scope + ".x", s, t):
        return (f"{scope}.residual" if scope else "residual"), Kind.RESIDUAL
    stages = _stage_widths(ctx.config_of(scope + ".x"), ctx.target_config_of(scope + ".x"), s, t)
    if stages and scope:
        return f"{scope}.{'+'.join(stages)}.width", Kind.STAGE
    return (f"{scope}.channels.{s}" if scope else f"channels.{s}"), Kind.CHANNELS


def _stage_widths(config, tconfig, s: int, t: int) -> list[str]:
    """The backbone stages whose width changes from ``s`` to ``t`` (``RULES.backbone_widths``); several when
    stages share both sizes (they then share a choice: their tensors cannot be told apart by size)."""
    found = []
    for field_name, label in RULES.backbone_widths.items():
        a, b = getattr(config, field_name, None), getattr(tconfig, field_name, None)
        pairs = list(zip(a, b)) if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) else [(a, b)]
        found += [label.format(i=i + 1) for i, pair in enumerate(pairs) if pair == (s, t)]
    return found


def backbone_outputs(ctx: Context) -> None:
    """A layer outside the backbone that reads its features (DETR's input projection) shares the last
    stage's width: a channel dimension outside every stage's sub-model, with the sizes of exactly one
    stage, joins that stage (so one choice covers both)."""
    stages = [d for d in ctx.dims if d.kind == Kind.STAGE]
    for dim in ctx.dims:
        same = [d for d in stages if (d.source, d.target) == (dim.source, dim.target)]
        if dim.kind != Kind.CHANNELS or len(same) != 1 or not dim.axes:
            continue
        scope = same[0].name.rsplit(".", 2)[0]
        if all(not a.tensor.startswith(scope + ".") for a in dim.axes):
            same[0].axes.extend(dim.axes)
            dim.axes = []


STEPS: tuple[Step, ...] = (
    Step(layers, "layer counts come first: they name whole stacks and claim no tensor axis"),
    Step(stage_depths, "with the layer counts: a backbone stage's layers are a stack kept in a Sequential"),
    Step(attention, "attention modules know their own heads and widths; their q/k/v axes must be claimed "
                    "before the size rule could merge a head axis into a residual or FFN of equal size"),
    Step(shared_heads, "right after attention: it merges the heads dimensions attention found"),
    Step(experts, "experts modules keep 3-D tensors whose axes no layer type explains; their units are "
                  "claimed before the size rule could merge them into a stream of equal size"),
    Step(ids, "id tables and position grids keep their meaning (ids are truncated, grids resized as "
              "grids); claimed before the size rule, which would treat their rows as features"),
    Step(sizes, "what no structure explains is grouped by the sizes where layers meet"),
    Step(backbone_outputs, "after the sizes: it joins a channel dimension the size rule made outside a "
                           "backbone to the backbone stage it reads"),
)


def make_plan(source: nn.Module, target: nn.Module) -> Plan:
    """The dimensions in which ``target`` differs from ``source`` and every tensor axis of each."""
    ctx = Context(source, target)
    for step in STEPS:
        step.rule(ctx)
    # integer buffers (position ids, relative-position indices) and frozen parameters (Whisper's sinusoids)
    # are computed by the model from its config: a resized one keeps the target's own values
    frozen = {n for n, p in target.named_parameters() if not p.requires_grad}
    computed = [n for n, t in ctx.tgt.items() if n in ctx.src and ctx.src[n].shape != t.shape
                and (not t.is_floating_point() or n in frozen)]
    dims = [d for d in ctx.dims if d.axes or d.kind == Kind.LAYERS]
    covered = {(a.tensor, a.axis) for d in dims for a in d.axes}
    unplanned = {real_name(n) for n, axis, *_ in ctx.changed() if (n, axis) not in covered and n not in computed}
    for name, axis, s, t in ctx.changed():  # a table with one entry per layer after the first (YOLOS)
        stack = next((d for d in dims if d.kind == Kind.LAYERS and (d.source - 1, d.target - 1) == (s, t)), None)
        if real_name(name) in unplanned and stack is not None and axis == 0:
            ctx.reasons.setdefault(real_name(name), f"one entry per layer of {stack.name} after the first; "
                                                    f"no rule ties it to the layers kept")
    reasons = {n: why for n, why in ctx.reasons.items() if n in unplanned}
    return Plan(dims, sorted(unplanned), computed, ctx.fused, reasons)
