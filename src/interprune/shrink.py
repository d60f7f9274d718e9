"""Shrink (or grow) a Hugging Face model: a source and config overrides in, a filled target out.

The target config is rebuilt through its config class, so fields derived from the ones you change
(Llama's ``head_dim``, Swin's ``hidden_size``, Qwen's ``layer_types``, backbones' ``stage_names``)
follow them. The target is built and run once on a tiny dummy input before any weight is read, so an
impossible target is one line naming the key to change. Loading and saving live in ``models``, the
dimension plan in ``plan`` and the tensor walk in ``transfer``.
"""

from __future__ import annotations

import copy
import inspect
import json
import os
from typing import Any

import torch
from transformers import PretrainedConfig, PreTrainedModel
from transformers.utils import logging as transformers_logging

from .errors import InterpruneError
from .models import (build_model, first_line, load_config, load_model, model_class,  # noqa: F401
                     save, tokenizer_size)
from .plan import Plan, make_plan
from .preserve import PRESERVING, check_options, fill
from .resample import METHODS
from .transfer import TransferReport, transfer

__all__ = ["shrink", "save", "load_config", "target_config", "build_model", "load_model", "parse_overrides",
           "check_target", "plan_for"]

HIDDEN_SIZES = ("d_model", "hidden_size", "embed_dim", "n_embd", "dim")
HEAD_COUNTS = ("num_attention_heads", "encoder_attention_heads", "decoder_attention_heads", "n_head", "n_heads",
               "num_heads")
COUNTS = ("num_stages",)  # counts some configs store beside their per-stage lists instead of deriving them
KEEP = {"architectures", "id2label", "label2id", "model_type", "transformers_version", "dtype", "torch_dtype",
        "_name_or_path"}  # never re-derived, whatever their defaults say


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


def dummy_inputs(model: PreTrainedModel) -> dict[str, torch.Tensor]:
    """The smallest input each modality of ``model`` takes: 4 tokens, a small image, a short spectrogram."""
    config = model.config
    params = inspect.signature(model.forward).parameters
    vision = getattr(config, "vision_config", None) or config
    text = getattr(config, "text_config", None) or config
    inputs: dict[str, torch.Tensor] = {}
    if "input_ids" in params:
        vocab = getattr(text, "vocab_size", None) or 2
        inputs["input_ids"] = torch.tensor([[1, 2, 3, 1]]).clamp(max=vocab - 1)
    if "pixel_values" in params:
        size = getattr(vision, "image_size", None) or 128  # detectors: deep enough for a 1/32 feature map
        height, width = (size, size) if isinstance(size, int) else tuple(size)[:2]
        channels = getattr(vision, "num_channels", 3)
        inputs["pixel_values"] = torch.zeros(1, channels, height, width)
    if "input_values" in params:  # raw audio (Wav2Vec2): 0.1 s at 16 kHz, a few frames after its strided convs
        inputs["input_values"] = torch.zeros(1, 1600)
    if "input_features" in params:
        frames = 2 * getattr(config, "max_source_positions", 1500)
        inputs["input_features"] = torch.zeros(1, getattr(config, "num_mel_bins", 80), frames)
    if "decoder_input_ids" in params and getattr(config, "is_encoder_decoder", False):
        start = getattr(config, "decoder_start_token_id", None) or 0
        inputs["decoder_input_ids"] = torch.tensor([[start]])
    return inputs


@torch.no_grad()
def check_target(model: PreTrainedModel, overrides: dict[str, Any]) -> None:
    """Run the freshly built target once on a dummy input, so a target that cannot run is refused now."""
    inputs = dummy_inputs(model)
    if not inputs:
        return
    try:
        model(**{k: v.to(model.dtype) if v.is_floating_point() else v for k, v in inputs.items()})
    except Exception as err:
        keys = ", ".join(overrides) or "the config"
        raise InterpruneError(f"the target model fails on a dummy input ({first_line(err)}); change {keys}") from None


def plan_for(source: str | os.PathLike | PreTrainedModel, overrides: dict[str, Any]) -> Plan:
    """The dimension plan of a shrink, from shapes only: both models are built without memory."""
    config = source.config if isinstance(source, PreTrainedModel) else load_config(source)
    target = build_model(target_config(config, overrides), meta=True)
    model = source if isinstance(source, PreTrainedModel) else build_model(config, meta=True)
    return make_plan(model, target)


def shrink(
    source: str | os.PathLike | PreTrainedModel,
    overrides: dict[str, Any] | None = None,
    method: str = "select",
    *,
    seed: int = 0,
    reinit: str | None = None,
    dtype: torch.dtype | None = None,
    choices: dict[str, torch.Tensor] | None = None,
    calibration: str | os.PathLike | dict | None = None,
    calibration_size: int = 32,
    compensate: bool = False,
    layers: str = "first",
    rotate: bool = False,
    calibration_batch: int | None = None,
    budget: int | None = None,
    device: str | None = None,
    progress: Any = None,
) -> tuple[PreTrainedModel, TransferReport]:
    """Build the model ``source`` would be with ``overrides`` and fill it from ``source``'s weights.

    Everything that can be checked cheaply (method, keys, values, the target's architecture, one forward
    pass of the target) is checked before the source's weights are read. The target keeps the source's
    dtype unless ``dtype`` is given. ``choices`` (dimension name -> source indices kept) override what
    the method would keep, see ``transfer``. The importance methods (``magnitude``, ``calibrated``) and
    the options ``layers``, ``rotate`` and ``compensate`` are ``preserve.fill``'s; ``calibration`` is a
    data path (prepared by the source's own processor, ``calibration_size`` examples) or an already
    prepared batch of inputs, run ``calibration_batch`` examples at a time (all at once for None) through
    the sequential engine (``walk``); ``budget`` bounds its stored activations in bytes (the rest spill to disk).
    """
    if method not in METHODS and method not in PRESERVING:
        raise InterpruneError(f"unknown method {method!r}; run 'interprune methods' to list them")
    from .progress import resolve_device

    device = resolve_device(device)  # a GPU asked for where there is none: refused before any work
    if calibration_batch is not None and calibration_batch < 1:
        raise InterpruneError(f"--calibration-batch must be at least 1, got {calibration_batch}")
    preserving = method in PRESERVING or compensate or rotate or layers != "first"
    if calibration is not None and not preserving:
        raise InterpruneError(f"--calibration is read only by 'calibrated', --compensate, --rotate and --layers "
                              f"importance; method {method!r} alone would ignore it: add one of them or drop it")
    if preserving:
        check_options(method, calibration=calibration is not None, compensate=compensate, layers=layers,
                      rotate=rotate)
        if reinit or choices:
            raise InterpruneError(f"method {method!r} with these options chooses its own units and fills every "
                                  f"tensor from the source; it takes no reinit or choices")
    overrides = dict(overrides or {})
    config = source.config if isinstance(source, PreTrainedModel) else load_config(source)
    target = build_model(target_config(config, overrides), seed)
    check_target(target, overrides)
    _check_vocabulary(source, config, target.config)
    model = source if isinstance(source, PreTrainedModel) else load_model(source, config)
    dtype = dtype or model.dtype  # a bf16/fp16 source gives a bf16/fp16 target (and half the memory)
    if dtype != target.dtype:
        target = target.to(dtype)
    if preserving:
        inputs = calibration
        if calibration is not None and not isinstance(calibration, dict):
            from .calibration import calibration_inputs, model_processor  # reads data: only when asked to

            processor = model_processor(source if not isinstance(source, PreTrainedModel) else source.name_or_path)
            inputs = calibration_inputs(calibration, processor, count=calibration_size, seed=seed)
        _check_budget(budget, config, inputs, calibration_batch)
        # least squares in full precision, without changing a caller's half-precision model
        ours = not isinstance(source, PreTrainedModel)  # loaded here: converted in place, not copied
        work = model if model.dtype == torch.float32 else (model.float() if ours else copy.deepcopy(model).float())
        if device != "cpu":
            work = copy.deepcopy(work) if work is model and not ours else work
            work, target, inputs = work.to(device), target.to(device), _on(inputs, device)
        report, record = fill(work, target.float(), method, inputs=inputs, compensate_layers=compensate,
                              layers=layers, rotate=rotate, seed=seed, batch_size=calibration_batch, budget=budget,
                              progress=progress)
        target = target.cpu()
        target = target.to(dtype)
        if calibration is not None and not isinstance(calibration, dict):
            record.calibration = str(calibration)
        report.preserved = record.to_dict()
    else:
        try:
            report = transfer(model, target, method, seed=seed, reinit=reinit, choices=choices)
        except ValueError as err:
            raise InterpruneError(str(err)) from None
    report.source = str(getattr(source, "name_or_path", source))
    report.overrides = overrides
    return target, report


def _check_budget(budget: int | None, config: PretrainedConfig, inputs: Any, batch: int | None) -> None:
    """The engine keeps at least one block boundary of one mini-batch in memory: refuse a budget below it."""
    if budget is None or not isinstance(inputs, dict):
        return
    config = getattr(config, "text_config", None) or config
    width = next((getattr(config, k) for k in HIDDEN_SIZES if isinstance(getattr(config, k, None), int)), None)
    first = next((v for v in inputs.values() if isinstance(v, torch.Tensor) and v.dim() > 1), None)
    if width is None or first is None:
        return
    examples = min(batch or first.shape[0], first.shape[0])
    tokens = first.shape[1] if first.dim() == 2 else (first.shape[-2] // 32) * (first.shape[-1] // 32)
    needed = examples * tokens * width * 4
    if budget < needed:
        size = f"{needed / 1e6:.1f}MB" if needed >= 10**5 else f"{needed}B"
        raise InterpruneError(f"--memory-budget {budget:,} bytes is too small for one block boundary of a mini-batch "
                              f"({examples} examples x {tokens} positions x {width} channels in float32); give at "
                              f"least {size} or a smaller --calibration-batch")


def _on(inputs: Any, device: str) -> Any:
    """Calibration inputs moved to ``device`` (one batch of tensors)."""
    if isinstance(inputs, dict):
        return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
    return inputs


def _check_vocabulary(source: Any, config: PretrainedConfig, target: PretrainedConfig) -> None:
    """A smaller vocabulary keeps token ids 0..n-1; the tokenizer copied beside it must not know more."""
    vocab, new = getattr(config, "vocab_size", None), getattr(target, "vocab_size", None)
    if not isinstance(source, (str, os.PathLike)) or not isinstance(vocab, int) or not isinstance(new, int):
        return
    known = tokenizer_size(source) if new < vocab else None
    if known is not None and known > new:
        raise InterpruneError(f"vocab_size {new} is smaller than the source tokenizer's {known} tokens, whose ids "
                              f"would then point past the embedding table; keep vocab_size >= {known} or give a "
                              f"model folder without tokenizer files and bring a matching tokenizer")
