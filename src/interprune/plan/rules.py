"""What a model cannot tell about its own structure, as data: the plan's rules.

Three tables, each typed:

* :data:`MODULE_TYPES`: one entry per layer type (Torch-Pruning's idea): which axis of its weight holds
  its outputs and which its inputs. New layer types register by adding an entry.
* :data:`RULES`: general rules that hold for every family (attribute names of attention modules, fused
  projections, name patterns of id tables, concatenations the shapes cannot reveal, sine layouts).
* :data:`FAMILY_RULES`: rules for one ``model_type`` only (mergekit's architecture data).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable

from torch import nn

from ..methods import Kind as MethodKind
from ..methods import names

__all__ = ["ModuleType", "MODULE_TYPES", "module_type", "is_norm_like", "Rules", "RULES", "FamilyRules",
           "FAMILY_RULES", "family_rules", "PartsRule", "STRUCTURED"]

# Methods that decide once per dimension (and can take ``choices``), from the method registry; the paper's
# interpolations resample each tensor on its own.
STRUCTURED = names(MethodKind.STRUCTURED)


# ------------------------------------------------------------------------------------------- module types

@dataclass(frozen=True)
class ModuleType:
    """A layer type: where its weight keeps outputs and inputs (None: it has no such axis)."""

    name: str
    matches: Callable[[nn.Module], bool]
    output: int | None
    input: int | None
    ids: bool = False  # rows are ids (an embedding table), columns features


MODULE_TYPES: tuple[ModuleType, ...] = (
    ModuleType("linear", lambda m: isinstance(m, nn.Linear), 0, 1),
    ModuleType("conv", lambda m: isinstance(m, nn.modules.conv._ConvNd), 0, 1),
    # transformers' GPT-2 layer stores its weight as (in, out)
    ModuleType("conv1d", lambda m: type(m).__name__ == "Conv1D", 1, 0),
    ModuleType("embedding", lambda m: isinstance(m, nn.Embedding), None, None, ids=True),
)


def module_type(module: nn.Module | None) -> ModuleType | None:
    """The first entry of :data:`MODULE_TYPES` that ``module`` is, or None."""
    if module is None:
        return None
    return next((t for t in MODULE_TYPES if t.matches(module)), None)


def is_norm_like(module: nn.Module | None) -> bool:
    """Layer/batch/group/RMS norms and per-channel scales: every tensor is one 1-D vector of one size."""
    if module is None or module_type(module) is not None:
        return False
    own = [t for t in list(module.parameters(recurse=False)) + list(module.buffers(recurse=False)) if t.dim() > 0]
    return bool(own) and all(t.dim() == 1 for t in own) and len({t.shape[0] for t in own}) == 1


# ---------------------------------------------------------------------------------------- general rules

@dataclass(frozen=True)
class PartsRule:
    """An axis that concatenates ``parts`` copies of another dimension (found by tensor name)."""

    pattern: str
    axis: int
    parts: int


def int_attr(obj: Any, names: tuple[str, ...]) -> int | None:
    """The first of ``names`` that ``obj`` has as an int (modules and configs name their sizes differently)."""
    return next((getattr(obj, a) for a in names if isinstance(getattr(obj, a, None), int)), None)


@dataclass(frozen=True)
class Rules:
    # attention head counts and widths, as the modules name them
    heads_attrs: tuple[str, ...] = ("num_heads", "num_attention_heads", "n_heads", "n_head")
    head_dim_attrs: tuple[str, ...] = ("head_dim", "attention_head_size", "key_value_proj_dim", "head_size")
    kv_attrs: tuple[str, ...] = ("num_key_value_heads", "num_kv_heads")
    # the attention's output projection among its children, or kept in a sibling module (BERT, ViT, YOLOS)
    output_names: tuple[str, ...] = ("o_proj", "out_proj", "o", "out_lin", "c_proj", "output_proj", "dense", "Wo")
    output_elsewhere: tuple[str, ...] = ("output.dense",)
    query_names: re.Pattern = re.compile(r"(^|_)(q|query)(_|$)|q_lin|q_content")
    key_names: re.Pattern = re.compile(r"(^|_)(k|key)(_|$)|k_lin|k_content")
    # axes made of `parts` copies of another dimension (concatenations the shapes cannot reveal)
    parts: tuple[PartsRule, ...] = (PartsRule(r"downsample\.reduction\.weight$", 1, 4),
                                    PartsRule(r"downsample\.norm\.(weight|bias)$", 0, 4),
                                    PartsRule(r"query_position_embeddings\.weight$", 1, 2))
    relative_tables: re.Pattern = re.compile(r"relative_position_bias_table$")
    # embedding tables whose rows are token ids (besides the model's own input/output embeddings)
    vocab_names: re.Pattern = re.compile(
        r"(word_embeddings|embed_tokens|token_embedding|wte|shared|token_type_embeddings)\.weight$")
    position_names: re.Pattern = re.compile(r"(position|wpe|embed_positions)")
    query_table_names: re.Pattern = re.compile(r"query_position_embeddings\.weight$")
    # config fields that name a residual stream's width
    hidden_fields: tuple[str, ...] = ("hidden_size", "d_model", "n_embd", "dim", "embed_dim")
    # parameter-free sine position embeddings (a module class ending so): layout -> the attribute giving
    # its width; "pairs": DETR's [y, x] halves of sin/cos pairs, "blocks": RT-DETR's four blocks
    sine_suffix: str = "SinePositionEmbedding"
    sine_layouts: dict[str, str] = field(default_factory=lambda: {"pairs": "num_position_features",
                                                                  "blocks": "embed_dim"})
    # backbone stages (Hugging Face ResNet, ConvNeXt, Swin): the config fields that give each stage's width,
    # so a backbone's channel dimensions are named by stage; and the Sequential containers whose children
    # are a stage's layers (ModuleLists, as Swin's blocks, are layer stacks already)
    backbone_widths: dict[str, str] = field(default_factory=lambda: {"embedding_size": "stem",
                                                                     "hidden_sizes": "stage{i}",
                                                                     "embed_dim": "embed"})
    stage_layers: re.Pattern = re.compile(r"(^|\.)stages\.\d+\.layers$")

    def is_query_or_key(self, module_name: str) -> bool:
        return bool(self.query_names.search(module_name) or self.key_names.search(module_name))


RULES = Rules()


# ------------------------------------------------------------------------------------- per-family rules

@dataclass(frozen=True)
class FamilyRules:
    """What only one family does."""

    # config field counting extra tokens placed *after* a 2-D position grid's cells (default: all before)
    grid_extra_after: str | None = None
    # layers outside the sub-models that read a sub-model's stream: (tensor name pattern, its input axis,
    # the sub-model), so their input joins that sub-model's residual (CLIP's projections)
    reads: tuple[tuple[str, int, str], ...] = ()
    # attention modules whose heads are one dimension across layers: the first layer computes a per-head
    # position bias that every later layer adds to the same head (T5); pattern -> the stack it names
    shared_heads: tuple[tuple[str, str], ...] = ()


FAMILY_RULES: dict[str, FamilyRules] = {
    "yolos": FamilyRules(grid_extra_after="num_detection_tokens"),
    "t5": FamilyRules(shared_heads=((r"^(encoder|decoder)\.block\.\d+\.layer\.0\.SelfAttention\.heads$", r"\1"),)),
    "clip": FamilyRules(reads=((r"^visual_projection\.weight$", 1, "vision_model"),
                               (r"^text_projection\.weight$", 1, "text_model"))),
}


def family_rules(model_type: str | None) -> FamilyRules:
    return FAMILY_RULES.get(model_type or "", FamilyRules())
