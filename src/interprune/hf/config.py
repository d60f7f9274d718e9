"""What a Hugging Face config says, and the target config rebuilt through its class.

The target config is rebuilt through its config class, so fields derived from the ones you change
(Llama's ``head_dim``, Swin's ``hidden_size``, Qwen's ``layer_types``, backbones' ``stage_names``)
follow them. The field names configs use for the hidden size and head counts, and the keys that do not
change what a model computes, are listed here once.
"""

from __future__ import annotations

import json
from typing import Any

from transformers import AutoConfig, PretrainedConfig
from transformers.utils import logging as transformers_logging

from ..errors import InterpruneError, first_line

__all__ = ["HIDDEN_SIZES", "HEAD_COUNTS", "STORAGE_KEYS", "NOT_ARCHITECTURE", "hidden_size", "without_storage",
           "new_config", "parse_overrides", "target_config"]

HIDDEN_SIZES = ("d_model", "hidden_size", "embed_dim", "n_embd", "dim")
HEAD_COUNTS = ("num_attention_heads", "encoder_attention_heads", "decoder_attention_heads", "n_head", "n_heads",
               "num_heads")
COUNTS = ("num_stages",)  # counts some configs store beside their per-stage lists instead of deriving them
# Config keys that do not change what a model computes: where and how it was stored, and its class names.
STORAGE_KEYS = frozenset({"_name_or_path", "transformers_version", "dtype", "torch_dtype"})
LABEL_KEYS = frozenset({"id2label", "label2id"})
NOT_ARCHITECTURE = STORAGE_KEYS | LABEL_KEYS | {"architectures"}  # two models with equal rest have equal costs
KEEP = NOT_ARCHITECTURE | {"model_type"}  # never re-derived in a rebuild, whatever their defaults say


def hidden_size(config: Any) -> int | None:
    """The residual width of a model, whatever its config calls it (``d_model``, ``hidden_size``, ...)."""
    return next((getattr(config, k) for k in HIDDEN_SIZES if isinstance(getattr(config, k, None), int)), None)


def without_storage(value: Any) -> Any:
    """A config dict without what says where or how it was stored (paths, versions, storage dtype), at any depth."""
    if isinstance(value, dict):
        return {k: without_storage(v) for k, v in value.items() if k not in STORAGE_KEYS}
    return [without_storage(v) for v in value] if isinstance(value, list) else value


def new_config(model_type: str, **fields: Any) -> PretrainedConfig:
    """A fresh config of ``model_type`` (``detr``, ``bert``, ...) with ``fields`` set: a model from nothing."""
    return AutoConfig.for_model(model_type, **fields)



def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["d_model=128", "id2label={...}"]`` -> dict; values are JSON where they parse, else strings."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise InterpruneError(f"--set {item!r} is not key=value; write e.g. --set d_model=128")
        try:
            out[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            out[key.strip()] = raw
    return out


def target_config(config: PretrainedConfig, overrides: dict[str, Any]) -> PretrainedConfig:
    """``config`` with ``overrides`` (dotted keys reach sub-configs), rebuilt through its config class.

    Fields the class derives from others (dropping them from the saved config gives back the same value)
    are derived again from the new values unless you set them; list fields as long as a list you shortened
    are shortened alike. The result is checked for head counts the model cannot split.
    """
    verbosity = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()  # trial builds would repeat the source config's own warnings
    try:
        new, explicit = _rebuild(config, overrides, "")
    finally:
        transformers_logging.set_verbosity(verbosity)
    _check_heads(new, explicit, "")
    return new


def _rebuild(config: PretrainedConfig, overrides: dict[str, Any], where: str) -> tuple[PretrainedConfig, set[str]]:
    cls = type(config)
    base = config.to_dict()
    subs = {k for k, v in vars(config).items() if isinstance(v, PretrainedConfig)}
    own = {k: v for k, v in overrides.items() if "." not in k}
    nested: dict[str, dict[str, Any]] = {}
    for key, value in overrides.items():
        if "." in key:
            head, _, rest = key.partition(".")
            nested.setdefault(head, {})[rest] = value
    for key in list(own) + list(nested):
        if key not in base and not hasattr(config, key) or key in nested and key not in subs:
            known = ", ".join(sorted(k for k in config.to_diff_dict() if not k.startswith("_"))[:12])
            raise InterpruneError(f"unknown config key {where + key!r} for {cls.__name__}; known keys include: "
                                  f"{known}, ...")
    explicit = {where + k for k in own}
    for sub in subs:
        rebuilt, inner = _rebuild(getattr(config, sub), nested.get(sub, {}), f"{where}{sub}.")
        base[sub] = rebuilt.to_dict()
        explicit |= inner
    derived: set[str] = set()
    for key in base:  # one at a time: of two fields derived from each other (out_features, out_indices) one stays
        if key not in own and key not in subs and key not in KEEP and _derived(cls, base, derived | {key}, key):
            derived.add(key)
    explicit |= {where + k for k in base if k not in derived}
    values = {k: v for k, v in {**base, **own}.items() if k not in derived}
    _follow_lists(config, own, values, where)
    try:
        new = cls(**values)
    except Exception as err:
        what = ", ".join(f"{v!r} for {where + k}" for k, v in own.items()) or "in the source config"
        raise InterpruneError(f"bad value {what}: {first_line(err)}") from None
    for key, value in own.items():  # strict configs may coerce; a value they silently ignore is an error
        if getattr(new, key, None) != value and not isinstance(value, dict):
            raise InterpruneError(f"bad value {value!r} for {where + key}: {cls.__name__} keeps "
                                  f"{getattr(new, key, None)!r}")
    return new, explicit


def _derived(cls: type[PretrainedConfig], base: dict[str, Any], dropped: set[str], key: str) -> bool:
    """Whether the class gives ``key`` its stored value by itself (so it must follow the fields it comes from)."""
    try:
        rebuilt = cls(**{k: v for k, v in base.items() if k not in dropped})
    except Exception:
        return False
    value = getattr(rebuilt, key, _MISSING)
    return value is not _MISSING and _plain(value) == _plain(base[key])


_MISSING = object()


def _plain(value: Any) -> Any:
    return value.to_dict() if isinstance(value, PretrainedConfig) else value


def _follow_counts(config: PretrainedConfig, own: dict[str, Any], values: dict[str, Any], where: str) -> None:
    """Per-layer lists of names (Gemma3's ``layer_types`` when not the default pattern) follow a changed layer
    count: the first layers keep their types; more layers than listed must be listed."""
    for key, new in own.items():
        old = getattr(config, key, None)
        if not isinstance(new, int) or not isinstance(old, int) or isinstance(new, bool) or new == old:
            continue
        for other, value in list(values.items()):
            if other in own or not isinstance(value, list) or len(value) != old or not value:
                continue
            if not all(isinstance(v, str) for v in value):
                continue
            if new > old:
                raise InterpruneError(f"{where}{key} grows to {new} but {where}{other} lists {old} entries; set "
                                      f"{where}{other} to a list of {new}")
            values[other] = value[:new]


def _follow_lists(config: PretrainedConfig, own: dict[str, Any], values: dict[str, Any], where: str) -> None:
    """Per-stage lists must stay as long as the stage list you changed (Swin ``depths`` -> ``num_heads``)."""
    _follow_counts(config, own, values, where)
    for key, new in own.items():
        old = getattr(config, key, None)
        if not (isinstance(new, list) and isinstance(old, list)) or len(new) == len(old):
            continue
        for other, value in list(values.items()):
            if other in COUNTS and other not in own and value == len(old):
                values[other] = len(new)
            if other in own or other == key or not isinstance(value, list) or len(value) != len(old):
                continue
            if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
                continue
            if len(new) < len(old):
                values[other] = value[: len(new)]
            else:
                raise InterpruneError(f"{where}{key} now has {len(new)} entries but {where}{other} has {len(value)}; "
                                      f"set {where}{other} to a list of {len(new)} too")


def _check_heads(config: PretrainedConfig, explicit: set[str], where: str) -> None:
    """Attention splits the hidden size over heads, and query heads over key/value heads; some models only
    fail at the first forward, others silently build a model that cannot load."""
    fields = config.to_dict()
    hidden_key = next((k for k in HIDDEN_SIZES if isinstance(fields.get(k), int)), None)
    hidden = fields.get(hidden_key) if hidden_key else None
    own_head_dim = isinstance(fields.get("head_dim"), int) and where + "head_dim" in explicit
    for key in HEAD_COUNTS:
        heads = fields.get(key)
        if isinstance(heads, int) and heads > 0 and hidden and hidden % heads and not own_head_dim:
            raise InterpruneError(
                f"hidden size {hidden} is not divisible by {where}{key}={heads}; pick a {where}{hidden_key} that "
                f"is a multiple of {heads}, change {where}{key}, or set {where}head_dim explicitly")
        widths = fields.get("hidden_sizes")
        if isinstance(heads, list) and isinstance(widths, list) and len(widths) == len(heads):  # SegFormer
            for stage, (width, count) in enumerate(zip(widths, heads)):
                if count <= 0 or width % count:
                    raise InterpruneError(f"stage {stage} has width {width} ({where}hidden_sizes[{stage}]), not "
                                          f"divisible by {where}{key}[{stage}]={count}; pick head counts that divide it")
        if isinstance(heads, list) and isinstance(fields.get("embed_dim"), int):  # Swin: one count per stage
            for stage, count in enumerate(heads):
                width = fields["embed_dim"] * 2 ** stage
                if count <= 0 or width % count:
                    raise InterpruneError(f"stage {stage} has width {width}, not divisible by {where}{key}[{stage}]="
                                          f"{count}; pick head counts that divide {where}embed_dim * 2**stage")
    kv = fields.get("num_key_value_heads")
    heads = fields.get("num_attention_heads")
    if isinstance(kv, int) and isinstance(heads, int) and (kv <= 0 or heads % kv):
        divisors = ", ".join(str(d) for d in range(1, heads + 1) if heads % d == 0)
        raise InterpruneError(f"{where}num_key_value_heads={kv} does not divide {where}num_attention_heads={heads}; "
                              f"set {where}num_key_value_heads to one of {divisors}")
    for key, value in vars(config).items():
        if isinstance(value, PretrainedConfig):
            _check_heads(value, explicit, f"{where}{key}.")
