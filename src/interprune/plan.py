"""Which tensor axes are the same dimension of a model: the plan every structure-aware method consumes.

A method that keeps *particular* residual channels, FFN units or heads must apply one choice to every
tensor axis that shares that dimension, and it must know what an axis is (a head, a position grid, a
token id). This module derives that from the two models themselves, source and target, without running
them and without reading files:

* module types say what an axis is: a ``Linear``'s rows and its bias are its outputs, a norm's tensors
  share one axis, an ``Embedding``'s rows are ids and its columns are features;
* attention modules say how their projections are split: their own ``num_heads``/``head_dim``
  attributes (or the projection widths) give heads, head width and key/value heads;
* sizes say what is connected: two changed axes with the same (source, target) sizes are the same
  dimension when they meet outside a layer or in a norm (the residual stream, conv channels per
  stage); otherwise they belong to the layer they sit in (FFN units, one dimension per layer);
* configs say where position grids are (``image_size``/``patch_size``).

What the model cannot tell is kept as data in :data:`RULES` (fused projections, output projections kept
beside the attention module, extra tokens of position grids, parameter-free encodings). Axes nothing
explains are listed in ``Plan.unplanned`` and resized per tensor, as before.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch
from torch import Tensor, nn

__all__ = ["Axis", "Dimension", "Plan", "make_plan", "plan_summary", "default_choices", "axis_index", "RULES", "STRUCTURED"]

# Methods that decide once per dimension (and can take ``choices``); the paper's interpolations resample
# each tensor on its own.
STRUCTURED = ("select", "first")

RULES: dict[str, Any] = {
    # attention head counts and widths, as the modules name them
    "heads_attrs": ("num_heads", "num_attention_heads", "n_heads", "n_head"),
    "head_dim_attrs": ("head_dim", "attention_head_size", "key_value_proj_dim"),
    # the attention's output projection among its children, or kept in a sibling module (BERT, ViT-v4, YOLOS)
    "output_names": ("o_proj", "out_proj", "o", "out_lin", "c_proj", "output_proj"),
    "output_elsewhere": ("output.dense",),
    "query_names": r"(^|_)(q|query)(_|$)|q_lin|q_content",
    "key_names": r"(^|_)(k|key)(_|$)|k_lin|k_content",
    # fused q/k/v projections: the output axis is `parts` equal blocks (GPT-2 c_attn)
    "fused": {"c_attn": 3, "qkv": 3, "in_proj": 3},
    # axes made of `parts` copies of another dimension (concatenations the shapes cannot reveal)
    "parts": [(r"downsample\.reduction\.weight$", 1, 4), (r"downsample\.norm\.(weight|bias)$", 0, 4),
              (r"query_position_embeddings\.weight$", 1, 2)],
    # extra tokens of a 2-D position grid placed after the patches (default: before, as CLS/distillation)
    "grid_extra_after": {"yolos": "num_detection_tokens"},
    "relative_tables": r"relative_position_bias_table$",
    # embedding tables whose rows are token ids (besides the model's own input/output embeddings)
    "vocab_names": r"(word_embeddings|embed_tokens|token_embedding|wte|shared|token_type_embeddings)\.weight$",
    "position_names": r"(position|wpe|embed_positions)",
    "query_table_names": r"query_position_embeddings\.weight$",
    "hidden_fields": ("hidden_size", "d_model", "n_embd", "dim", "embed_dim"),
    # parameter-free sine position embeddings: the attribute that gives their width -> channel layout
    "sine_layouts": {"pairs": "num_position_features", "blocks": "embed_dim"},
}


@dataclass
class Axis:
    """One tensor axis that belongs to a dimension."""

    tensor: str
    axis: int
    parts: int = 1  # the axis is `parts` equal blocks, each resized alike with the same choice
    group: int = 1  # units come in groups (heads: group = head_dim); a choice keeps whole groups


@dataclass
class Dimension:
    name: str
    kind: str  # residual | ffn | heads | head_dim | kv_heads | positions | grid | vocab | queries | channels | layers
    source: int
    target: int
    axes: list[Axis] = field(default_factory=list)
    aligned: Tensor | None = None  # source indices forced by a parameter-free encoding
    grid: dict | None = None  # grids: source/target (rows, cols), extra tokens before/after, relative
    kv: tuple[int, int] | None = None  # query heads grouped under this many key/value heads (source, target)

    def to_dict(self) -> dict:
        out = {"name": self.name, "kind": self.kind, "source": self.source, "target": self.target,
               "axes": [[a.tensor, a.axis, a.parts, a.group] for a in self.axes]}
        if self.aligned is not None:
            out["aligned"] = self.aligned.tolist()
        if self.grid is not None:
            out["grid"] = self.grid
        if self.kv is not None:
            out["kv"] = list(self.kv)
        return out


@dataclass
class Plan:
    dimensions: list[Dimension]
    unplanned: list[str]  # resized tensors no dimension explains: resized per tensor as before
    computed: list[str] = field(default_factory=list)  # integer buffers the target computes from its config

    def __post_init__(self) -> None:
        self._index: dict[str, list[tuple[int, Dimension, Axis]]] = {}
        for dim in self.dimensions:
            for ax in dim.axes:
                self._index.setdefault(ax.tensor, []).append((ax.axis, dim, ax))

    def entries(self, name: str) -> list[tuple[int, Dimension, Axis]]:
        return self._index.get(name, [])

    def __getitem__(self, name: str) -> Dimension:
        return next(d for d in self.dimensions if d.name == name)

    def to_dict(self) -> dict:
        return {"dimensions": [d.to_dict() for d in self.dimensions], "unplanned": self.unplanned,
                "computed": self.computed}

    def describe(self) -> str:
        """One line per changed dimension and the tensor axes it covers (``interprune plan``)."""
        lines = []
        for d in self.dimensions:
            extra = " (aligned with the sine position encoding)" if d.aligned is not None else ""
            if d.grid:
                g = d.grid
                extra += f" grid {g['source'][0]}x{g['source'][1]} -> {g['target'][0]}x{g['target'][1]}"
                extra += f", {g['before']}+{g['after']} extra tokens kept" if g["before"] + g["after"] else ""
            lines.append(f"{d.kind:<9} {d.name}: {d.source} -> {d.target}{extra}")
            for a in d.axes:
                split = (f" parts={a.parts}" if a.parts > 1 else "") + (f" group={a.group}" if a.group > 1 else "")
                lines.append(f"    {a.tensor}[{a.axis}]{split}")
        for name in self.unplanned:
            lines.append(f"unplanned {name}: no dimension explains its change; resized on its own, per tensor")
        return "\n".join(lines) if lines else "no dimension changes"


def plan_summary(plan: dict) -> str:
    """One line for the shrink's output: how many dimensions of each kind changed, what was left per tensor."""
    kinds: dict[str, int] = {}
    for dim in plan.get("dimensions", []):
        kinds[dim["kind"]] = kinds.get(dim["kind"], 0) + 1
    parts = ", ".join(f"{n} {k}" for k, n in kinds.items()) or "no dimension changed"
    return f"plan: {parts}; {len(plan.get('unplanned', []))} tensors resized on their own ('interprune plan' lists them)"


# --------------------------------------------------------------------------------------------- derivation


def _tensors(model: nn.Module) -> dict[str, Tensor]:
    return dict(model.state_dict(keep_vars=True))


def _owner(name: str) -> tuple[str, str]:
    prefix, _, leaf = name.rpartition(".")
    return prefix, leaf


def _is_conv1d(module: nn.Module) -> bool:
    return type(module).__name__ == "Conv1D"  # transformers' GPT-2 layer: weight is (in, out)


def _out_axis(module: nn.Module) -> int | None:
    if isinstance(module, nn.Linear) or isinstance(module, nn.modules.conv._ConvNd):
        return 0
    if _is_conv1d(module):
        return 1
    return None


def _out_features(module: nn.Module) -> int | None:
    axis = _out_axis(module)
    return None if axis is None else int(module.weight.shape[axis])


def _in_axis(module: nn.Module) -> int:
    return 0 if _is_conv1d(module) else 1


def _norm_like(module: nn.Module) -> bool:
    """Layer/batch/group/RMS norms and per-channel scales: every tensor is one 1-D vector of one size."""
    own = [t for t in list(module.parameters(recurse=False)) + list(module.buffers(recurse=False)) if t.dim() > 0]
    return (not isinstance(module, (nn.Linear, nn.Embedding)) and not _is_conv1d(module) and bool(own)
            and all(t.dim() == 1 for t in own) and len({t.shape[0] for t in own}) == 1)


def _block(name: str, lists: set[str]) -> str:
    """The innermost layer (ModuleList element) a tensor belongs to, '' when outside every layer."""
    parts = name.split(".")
    best = ""
    for i in range(1, len(parts)):
        if ".".join(parts[:i]) in lists and parts[i].isdigit():
            best = ".".join(parts[: i + 1])
    return best


class _Builder:
    def __init__(self, source: nn.Module, target: nn.Module):
        self.source, self.target = source, target
        self.src, self.tgt = _tensors(source), _tensors(target)
        self.src_mods = dict(source.named_modules())
        self.tgt_mods = dict(target.named_modules())
        self.lists = {n for n, m in self.tgt_mods.items() if isinstance(m, nn.ModuleList)}
        self.claimed: dict[tuple[str, int], Dimension] = {}
        self.dims: list[Dimension] = []
        self.root_config = getattr(source, "config", None)

    # helpers
    def changed(self) -> Iterator[tuple[str, int, int, int]]:
        for name, t in self.tgt.items():
            s = self.src.get(name)
            if s is None or s.dim() != t.dim() or s.shape == t.shape:
                continue
            for axis, (a, b) in enumerate(zip(s.shape, t.shape)):
                if a != b:
                    yield name, axis, int(a), int(b)

    def add(self, dim: Dimension) -> Dimension:
        """Register ``dim`` with those of its axes no other dimension explains yet (a head's width and the
        head count may share an axis: the axis is heads x width)."""
        nests = {("head_dim", "heads"), ("head_dim", "kv_heads"), ("heads", "head_dim"), ("kv_heads", "head_dim")}
        dim.axes = [a for a in dim.axes if (a.tensor, a.axis) not in self.claimed
                    or (self.claimed[(a.tensor, a.axis)].kind, dim.kind) in nests]
        for a in dim.axes:
            self.claimed.setdefault((a.tensor, a.axis), dim)
        names = {d.name for d in self.dims}
        if dim.name in names:  # e.g. the residual of each Swin stage: name them by source size
            dim.name = f"{dim.name}.{dim.source}"
        self.dims.append(dim)  # dimensions left without axes are dropped at the end
        return dim

    def shape_changes(self, name: str, axis: int) -> tuple[int, int] | None:
        s, t = self.src.get(name), self.tgt.get(name)
        if s is None or t is None or s.dim() != t.dim() or s.shape[axis] == t.shape[axis]:
            return None
        return int(s.shape[axis]), int(t.shape[axis])

    def config_of(self, name: str) -> Any:
        return _config_above(self.src_mods, name, self.root_config)

    def target_config_of(self, name: str) -> Any:
        return _config_above(self.tgt_mods, name, getattr(self.target, "config", None))

    def scope(self, name: str) -> str:
        """The sub-model a tensor belongs to (CLIP's text_model/vision_model, a backbone): residuals of
        sub-models with their own kind of config are different dimensions even when their sizes agree
        (T5's encoder and decoder copy the root config and share its residual)."""
        parts = name.split(".")
        for i in range(1, len(parts)):
            module = self.src_mods.get(".".join(parts[:i]))
            config = getattr(module, "config", None)
            if config is not None and self.root_config is not None and type(config) is not type(self.root_config):
                return ".".join(parts[:i])
        return ""

    # rules
    def layers(self) -> None:
        src_lists = {n: len(m) for n, m in self.src_mods.items() if isinstance(m, nn.ModuleList)}
        for name in sorted(self.lists):
            n_t, n_s = len(self.tgt_mods[name]), src_lists.get(name)
            if n_s is not None and n_s != n_t:
                self.add(Dimension(name, "layers", n_s, n_t))

    def attention(self) -> None:
        for prefix, module in self.src_mods.items():
            target = self.tgt_mods.get(prefix)
            if target is None:
                continue
            info_s, info_t = _attention_info(prefix, module, self.src_mods), _attention_info(prefix, target,
                                                                                              self.tgt_mods)
            if info_s is None or info_t is None:
                continue
            (h_s, d_s, kv_s, projs), (h_t, d_t, kv_t, _) = info_s, info_t
            heads, width, kv = [], [], []
            for tensor, axis, role, parts in projs:
                if tensor not in self.tgt or self.src[tensor].dim() != self.tgt[tensor].dim():
                    continue
                units_s, units_t = (kv_s, kv_t) if role == "kv" else (h_s, h_t)
                if role == "extra":  # a per-head axis that is not q/k/v (offsets, relative biases)
                    n_s, n_t = self.src[tensor].shape[axis], self.tgt[tensor].shape[axis]
                    if h_s != h_t and n_s % h_s == 0 and n_t == h_t * (n_s // h_s):
                        heads.append(Axis(tensor, axis, 1, n_s // h_s))
                    continue
                expect = parts * units_t * d_t
                if self.tgt[tensor].shape[axis] != expect or self.src[tensor].shape[axis] != parts * units_s * d_s:
                    heads, width, kv = [], [], []  # shapes disagree with the attributes: leave it to the size rules
                    break
                if units_s != units_t:
                    (kv if role == "kv" and kv_s != h_s else heads).append(Axis(tensor, axis, parts, d_s))
                if d_s != d_t:
                    width.append(Axis(tensor, axis, parts * units_s, 1))
            if width:
                dim = Dimension(f"{prefix}.head_dim", "head_dim", d_s, d_t, width)
                dim.aligned = _rotary_alignment(self.source, d_s, d_t)
                self.add(dim)
            if heads:
                grouped = (kv_s, kv_t) if kv_s != h_s and kv_s and h_s % kv_s == 0 and kv_t and h_t % kv_t == 0 else None
                self.add(Dimension(f"{prefix}.heads", "heads", h_s, h_t, heads, kv=grouped))
            if kv:
                self.add(Dimension(f"{prefix}.kv_heads", "kv_heads", kv_s, kv_t, kv))

    def embeddings(self) -> None:
        """Rows of id tables: vocabulary, learned 1-D positions, object queries; 2-D position grids."""
        vocab_re, pos_re = re.compile(RULES["vocab_names"]), re.compile(RULES["position_names"])
        query_re, rel_re = re.compile(RULES["query_table_names"]), re.compile(RULES["relative_tables"])
        io = set()
        for getter in ("get_input_embeddings", "get_output_embeddings"):
            try:
                module = getattr(self.source, getter)()
            except (AttributeError, NotImplementedError):
                module = None
            if module is not None:
                io.update(n for n, m in self.src_mods.items() if m is module)
        groups: dict[tuple, Dimension] = {}
        for name, axis, s, t in list(self.changed()):
            if (name, axis) in self.claimed:
                continue
            prefix, leaf = _owner(name)
            module = self.src_mods.get(prefix)
            grid = self.grid_of(name, s, t) if pos_re.search(name) else None
            if grid is None and rel_re.search(name) and axis == 0:
                r_s, r_t = math.isqrt(s), math.isqrt(t)
                if r_s * r_s == s and r_t * r_t == t:
                    grid = {"source": [r_s, r_s], "target": [r_t, r_t], "before": 0, "after": 0, "relative": True}
            if grid is not None:
                key = ("grid", _grid_key(grid))
                scope = self.scope(name)
                label = "relative_position_bias" if grid["relative"] else f"{scope}.position_grid" if scope else "position_grid"
                dim = groups.get(key) or groups.setdefault(key, self.add(Dimension(label, "grid", s, t, grid=grid)))
                self.claim(dim, Axis(name, axis))
                continue
            rows = isinstance(module, nn.Embedding) and axis == 0 or (prefix in io and axis == 0)
            if not rows:
                continue
            if prefix in io or vocab_re.search(name):
                kind, label = "vocab", ("token_types" if "token_type" in name else "vocab")
            elif query_re.search(name):
                kind, label = "queries", "queries"
            elif pos_re.search(name):
                kind, label = "positions", f"{prefix}"
            else:
                continue
            scope = self.scope(name)
            label = f"{scope}.{label}" if scope and kind != "positions" else label
            key = (kind, label, s, t)
            dim = groups.get(key) or groups.setdefault(key, self.add(Dimension(label, kind, s, t)))
            self.claim(dim, Axis(name, axis))
            bias = f"{prefix}.bias"  # an output embedding's bias follows its rows
            if prefix in io and self.shape_changes(bias, 0) == (s, t):
                self.claim(dim, Axis(bias, 0))

    def grid_of(self, name: str, s: int, t: int) -> dict | None:
        config = self.config_of(name)
        tconfig = self.target_config_of(name) or config
        gs, gt = _grid_shape(config), _grid_shape(tconfig)
        if gs is None or gt is None:
            return None
        extra_s, extra_t = s - gs[0] * gs[1], t - gt[0] * gt[1]
        if extra_s != extra_t or extra_s < 0:
            return None
        after_field = RULES["grid_extra_after"].get(getattr(config, "model_type", ""))
        after = int(getattr(config, after_field, 0)) if after_field else 0
        return {"source": list(gs), "target": list(gt), "before": extra_s - after, "after": after, "relative": False}

    def claim(self, dim: Dimension, axis: Axis) -> None:
        if (axis.tensor, axis.axis) not in self.claimed:
            dim.axes.append(axis)
            self.claimed[(axis.tensor, axis.axis)] = dim

    def parts(self) -> list[tuple[str, int, int]]:
        """Axes that concatenate `parts` copies of a dimension, found by name (see RULES['parts'])."""
        found = []
        for name, axis, s, t in self.changed():
            for pattern, rule_axis, parts in RULES["parts"]:
                if rule_axis == axis and re.search(pattern, name) and s % parts == 0 and t % parts == 0:
                    found.append((name, axis, parts))
        return found

    def sizes(self) -> None:
        """The rest: group changed axes by (sub-model, source size, target size); global when they meet
        outside a layer or in a norm (residual stream, conv channels), else one dimension per layer."""
        split = {(n, a): p for n, a, p in self.parts()}
        typed: dict[tuple[str, int], bool] = {}  # axis -> belongs to a module type we understand
        entries = []
        for name, axis, s, t in self.changed():
            if (name, axis) in self.claimed:
                continue
            if not self.src[name].is_floating_point():
                continue
            prefix, _ = _owner(name)
            module = self.src_mods.get(prefix)
            parts = split.get((name, axis), 1)
            known = module is not None and (isinstance(module, (nn.Linear, nn.Embedding, nn.modules.conv._ConvNd))
                                             or _is_conv1d(module) or _norm_like(module))
            globl = not _block(name, self.lists) or (module is not None and _norm_like(module))
            entries.append((name, axis, s // parts, t // parts, parts, known, globl))
            typed[(name, axis)] = known
        plain = {(self.scope(n), s, t) for n, _, s, t, p, k, g in entries if p == 1 and k and g}
        entries = [e if e[4] == 1 or (self.scope(e[0]), e[2], e[3]) in plain else
                   (e[0], e[1], e[2] * e[4], e[3] * e[4], 1, e[5], e[6]) for e in entries]  # parts only of a known size
        keys: dict[tuple, dict] = {}
        for name, axis, s, t, parts, known, globl in entries:
            info = keys.setdefault((self.scope(name), s, t), {"global": False, "known": False, "blocks": set()})
            info["global"] |= globl
            info["known"] |= known
        made: dict[tuple, Dimension] = {}
        for name, axis, s, t, parts, known, globl in entries:
            scope = self.scope(name)
            info = keys[(scope, s, t)]
            if not info["known"]:  # only tensors of unknown modules have this size change: say so
                continue
            if info["global"]:
                label, kind = self.global_label(scope, s, t)
                key = (scope, s, t)
            else:
                block = _block(name, self.lists)
                module = self.src_mods.get(_owner(name)[0])
                conv = isinstance(module, nn.modules.conv._ConvNd)
                label, kind = f"{block}.{'channels' if conv else 'ffn'}", ("channels" if conv else "ffn")
                key = (block, s, t)
                if label in {d.name for d in made.values()} and key not in made:
                    label = f"{label}.{s}"
            dim = made.get(key)
            if dim is None:
                dim = made[key] = self.add(Dimension(label, kind, s, t))
                if info["global"]:
                    dim.aligned = _sine_alignment(self.source, s, t)
            self.claim(dim, Axis(name, axis, parts))

    def global_label(self, scope: str, s: int, t: int) -> tuple[str, str]:
        config, tconfig = self.config_of(scope + ".x"), self.target_config_of(scope + ".x")
        for field_name in RULES["hidden_fields"]:
            a, b = getattr(config, field_name, None), getattr(tconfig, field_name, None)
            if isinstance(a, int) and (a, b) == (s, t):
                return (f"{scope}.residual" if scope else "residual"), "residual"
        return (f"{scope}.channels.{s}" if scope else f"channels.{s}"), "channels"


def _grid_key(grid: dict) -> str:
    return repr(sorted(grid.items()))


def _config_above(modules: dict[str, nn.Module], name: str, default: Any) -> Any:
    """The config of the deepest module above ``name`` that has one (sub-models have their own)."""
    parts = name.split(".")
    for i in range(len(parts) - 1, -1, -1):
        module = modules.get(".".join(parts[:i]))
        if module is not None and getattr(module, "config", None) is not None:
            return module.config
    return default


def _grid_shape(config: Any) -> tuple[int, int] | None:
    image, patch = getattr(config, "image_size", None), getattr(config, "patch_size", None)
    if image is None or patch is None:
        return None
    image = (image, image) if isinstance(image, int) else tuple(image)
    patch = (patch, patch) if isinstance(patch, int) else tuple(patch)
    if len(image) != 2 or len(patch) != 2:
        return None
    return image[0] // patch[0], image[1] // patch[1]


def _attention_info(prefix: str, module: nn.Module, modules: dict[str, nn.Module]):
    """Heads, head width, key/value heads and the projections of an attention module, or None.

    Read from the module's own attributes where it has them (``num_heads``, ``head_dim``, ...), else
    from its projections' widths. Each projection is ``(tensor, axis, role, parts)``: role ``q`` (query
    heads, also values and outputs when there is no grouping), ``kv`` (key/value heads), ``extra``
    (another per-head axis such as deformable attention's sampling offsets).
    """
    ints = lambda names: next((getattr(module, a) for a in names if isinstance(getattr(module, a, None), int)), None)
    heads, head_dim = ints(RULES["heads_attrs"]), ints(RULES["head_dim_attrs"])
    if heads is None and head_dim is None:
        return None
    children = {n: c for n, c in module.named_children() if _out_axis(c) is not None and getattr(c, "weight", None) is not None}
    if not children:
        return None
    out_name = next((n for n in RULES["output_names"] if n in children), None)
    out_module, out_path = (children.pop(out_name), f"{prefix}.{out_name}") if out_name else (None, None)
    if out_module is None:
        parent = prefix.rpartition(".")[0]
        for rel in RULES["output_elsewhere"]:
            candidate = modules.get(f"{parent}.{rel}")
            if candidate is not None and _out_axis(candidate) is not None:
                out_module, out_path = candidate, f"{parent}.{rel}"
                break
    q_re, k_re = re.compile(RULES["query_names"]), re.compile(RULES["key_names"])
    fused = {n: p for n, p in RULES["fused"].items() if n in children}
    q_name = next((n for n in children if q_re.search(n)), None)
    k_name = next((n for n in children if k_re.search(n)), None)
    if q_name is not None:
        q_width = _out_features(children[q_name])
    elif fused:
        name, parts = next(iter(fused.items()))
        q_width = _out_features(children[name]) // parts
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
    k_width = _out_features(children[k_name]) if k_name else q_width
    kv_heads = k_width // head_dim if k_width % head_dim == 0 else heads
    projs: list[tuple[str, int, str, int]] = []
    for name, child in children.items():
        width, axis = _out_features(child), _out_axis(child)
        parts = fused.get(name, 1)
        role = "q" if width == parts * q_width else "kv" if width == k_width else "extra"
        tensors = [f"{prefix}.{name}.weight"] + ([f"{prefix}.{name}.bias"] if getattr(child, "bias", None) is not None else [])
        for i, tensor in enumerate(tensors):
            projs.append((tensor, axis if i == 0 else 0, role, parts))
    if out_module is not None:
        projs.append((f"{out_path}.weight", _in_axis(out_module), "q", 1))
    for name, tensor in module.named_parameters():  # relative-position biases: one column per head
        if "." in name and name.split(".")[0] in children or tensor.dim() < 2:
            continue
        if tensor.shape[-1] == heads:
            projs.append((f"{prefix}.{name}", tensor.dim() - 1, "extra", 1))
    return heads, head_dim, kv_heads, projs


def _sine_alignment(model: nn.Module, source: int, target: int) -> Tensor | None:
    """Source channels that keep a parameter-free 2-D sine position embedding unchanged on the kept channels.

    DETR family (``num_position_features`` = d/2): ``[y-part, x-part]``, channel 2k = sin(p / T^(2k/(d/2))),
    2k+1 = cos of the same. RT-DETR (``embed_dim`` = d): four blocks ``[sin_h, cos_h, sin_w, cos_w]`` of d/4
    channels, channel k at frequency T^(-k/(d/4)). For each target frequency we keep the source channel(s)
    with the nearest frequency: exact at d' = d/2 (DETR: source channels 4j, 4j+1 in each half).
    """
    for module in model.modules():
        name = type(module).__name__
        if not name.endswith("SinePositionEmbedding") or source % 4 or target % 4:
            continue
        layout, width = next(((k, getattr(module, f)) for k, f in RULES["sine_layouts"].items()
                              if isinstance(getattr(module, f, None), int)), (None, None))
        if layout == "pairs" and 2 * width == source:
            pairs = [min(round(j * source / target), source // 4 - 1) for j in range(target // 4)]
            half = [c for k in pairs for c in (2 * k, 2 * k + 1)]
            return torch.tensor(half + [source // 2 + c for c in half], dtype=torch.long)
        if layout == "blocks" and width == source:
            block_s, block_t = source // 4, target // 4
            picks = [min(round(j * block_s / block_t), block_s - 1) for j in range(block_t)]
            return torch.tensor([b * block_s + k for b in range(4) for k in picks], dtype=torch.long)
    return None


def _rotary_alignment(model: nn.Module, source: int, target: int) -> Tensor | None:
    """Head channels that keep rotary frequencies: channel i and i + d/2 rotate at base^(-2i/d)."""
    rotary = next((m for m in model.modules() if isinstance(getattr(m, "inv_freq", None), Tensor)), None)
    if rotary is None or rotary.inv_freq.numel() * 2 != source or source % 2 or target % 2:
        return None
    pairs = [min(round(j * source / target), source // 2 - 1) for j in range(target // 2)]
    return torch.tensor(pairs + [source // 2 + k for k in pairs], dtype=torch.long)


def make_plan(source: nn.Module, target: nn.Module) -> Plan:
    """The dimensions in which ``target`` differs from ``source`` and every tensor axis of each."""
    builder = _Builder(source, target)
    builder.layers()
    builder.attention()
    builder.embeddings()
    builder.sizes()
    # integer buffers (position ids, relative-position indices) and frozen parameters (Whisper's sinusoids)
    # are computed by the model from its config: a resized one keeps the target's own values
    frozen = {n for n, p in target.named_parameters() if not p.requires_grad}
    computed = [n for n, t in builder.tgt.items() if n in builder.src and builder.src[n].shape != t.shape
                and (not t.is_floating_point() or n in frozen)]
    dims = [d for d in builder.dims if d.axes or d.kind == "layers"]
    covered = {(a.tensor, a.axis) for d in dims for a in d.axes}
    unplanned = {n for n, axis, *_ in builder.changed() if (n, axis) not in covered and n not in computed}
    return Plan(dims, sorted(unplanned), computed)


# ------------------------------------------------------------------------------------------------ choices


def default_choices(plan: Plan, method: str) -> dict[str, Tensor]:
    """The source indices each dimension keeps under a structure-aware method (-1: the target's own value).

    ``select`` keeps evenly spaced units, ``first`` the leading ones; both keep the indices a parameter-free
    encoding forces (``aligned``). Whatever the method, ids keep their meaning: vocabularies and learned
    1-D positions are truncated or extended, relative-position tables keep their central offsets, and
    fewer layers keep the first ones. Grouped-query heads follow their key/value heads.
    """
    from .weights.resample import select_indices

    def first(n: int, m: int) -> Tensor:
        idx = torch.arange(m)
        idx[idx >= n] = -1
        return idx

    pick = select_indices if method == "select" else first
    out: dict[str, Tensor] = {}
    for dim in plan.dimensions:
        n, m = dim.source, dim.target
        if dim.kind in ("vocab", "positions", "layers"):
            out[dim.name] = first(n, m)
        elif dim.kind == "grid":
            out[dim.name] = _grid_choice(dim.grid, pick)
        elif dim.aligned is not None and method in STRUCTURED:
            out[dim.name] = dim.aligned.clone()
        else:
            out[dim.name] = pick(n, m).long()
    for dim in plan.dimensions:  # grouped-query attention: query heads stay with the key/value heads kept
        if dim.kind == "heads" and dim.kv is not None:
            (kv_s, kv_t), kv_name = dim.kv, dim.name.replace(".heads", ".kv_heads")
            kept = out[kv_name] if kv_name in out else torch.arange(kv_s)
            out[dim.name] = grouped_heads(kept, dim.source // kv_s, dim.target // kv_t, pick)
    return out


def grouped_heads(kv_choice: Tensor, group_s: int, group_t: int, pick) -> Tensor:
    """Query heads kept with grouped-query attention: for each kept key/value head, its own query heads."""
    inner = pick(group_s, group_t).long()
    return torch.cat([torch.where(inner >= 0, k * group_s + inner, -1) if k >= 0 else torch.full_like(inner, -1)
                      for k in kv_choice.tolist()])


def _grid_choice(grid: dict, pick) -> Tensor:
    (hs, ws), (ht, wt) = grid["source"], grid["target"]
    before, after = grid["before"], grid["after"]
    if grid["relative"]:  # offsets -(w-1)..(w-1): keep the central ones, so every offset keeps its meaning
        rows = torch.arange(ht) + (hs - ht) // 2
        cols = torch.arange(wt) + (ws - wt) // 2
        rows[(rows < 0) | (rows >= hs)] = -1
        cols[(cols < 0) | (cols >= ws)] = -1
    else:
        rows, cols = pick(hs, ht).long(), pick(ws, wt).long()
    cells = torch.where((rows[:, None] >= 0) & (cols[None, :] >= 0), rows[:, None] * ws + cols[None, :], -1)
    cells = torch.where(cells >= 0, cells + before, -1).reshape(-1)
    return torch.cat([torch.arange(before), cells, torch.arange(after) + before + hs * ws])


def axis_index(size: int, entries: list[tuple[Dimension, Axis]], choices: dict[str, Tensor]) -> Tensor | None:
    """Source indices for one axis of ``size`` elements (-1: keep the target's value), or None when the
    dimensions on this axis do not tile it (the caller then resizes the tensor on its own).

    Inner dimensions (a head's width, repeated in every head and part) apply first; grouped ones (whole
    heads) then keep whole groups of whatever width is left.
    """
    idx = torch.arange(size)
    for dim, ax in sorted(entries, key=lambda e: e[1].group > 1):
        choice = choices.get(dim.name)
        if choice is None:
            return None
        units = dim.source
        group = idx.numel() // (ax.parts * units) if ax.group > 1 else ax.group
        if ax.parts * units * group != idx.numel():
            return None
        view = idx.reshape(ax.parts, units, group)
        kept = view[:, choice.clamp(min=0), :].clone()
        kept[:, choice < 0, :] = -1
        idx = kept.reshape(-1)
    return idx
