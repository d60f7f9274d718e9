"""Shrink (or grow) a Hugging Face model: configs in, an ordinary model folder out.

This layer knows about transformers (configs, model classes, ``save_pretrained``) and about
folders; the tensor math lives in ``resample`` and the model walk in ``transfer``.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
import transformers
from transformers import AutoConfig, PretrainedConfig, PreTrainedModel

from .errors import InterpruneError
from .resample import METHODS
from .transfer import TransferReport, transfer

__all__ = ["shrink", "save", "load_config", "target_config", "build_model", "load_model", "parse_overrides"]

PROCESSOR_FILES = ("preprocessor_config.json", "tokenizer.json", "tokenizer_config.json",
                   "special_tokens_map.json", "vocab.txt", "vocab.json", "merges.txt")
HIDDEN_SIZES = ("d_model", "hidden_size", "embed_dim")


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


def load_config(source: str | os.PathLike) -> PretrainedConfig:
    """The source's config, with a one-line error when the source does not exist."""
    try:
        return AutoConfig.from_pretrained(str(source))
    except (OSError, ValueError):
        raise InterpruneError(
            f"cannot load model {str(source)!r}: it is neither a folder with a config.json nor a Hugging Face "
            f"Hub id that can be reached; check the path or the name (Hub ids need network access)"
        ) from None


def target_config(config: PretrainedConfig, overrides: dict[str, Any]) -> PretrainedConfig:
    """A copy of ``config`` with ``overrides`` applied (dotted keys reach sub-configs), validated."""
    out = copy.deepcopy(config)
    for key, value in overrides.items():
        *parents, leaf = key.split(".")
        holder = out
        for part in parents:
            holder = getattr(holder, part, None)
        if holder is None or not hasattr(holder, leaf):
            known = ", ".join(sorted(k for k in config.to_diff_dict() if not k.startswith("_"))[:12])
            raise InterpruneError(
                f"unknown config key {key!r} for {type(config).__name__}; known keys include: {known}, ..."
            )
        try:
            setattr(holder, leaf, value)
        except Exception as err:  # strict configs reject wrong types here
            detail = " ".join(line.strip() for line in str(err).splitlines() if line.strip())
            raise InterpruneError(f"bad value {value!r} for {key}: {detail}") from None
    _check_heads(out)
    return out


def _check_heads(config: PretrainedConfig) -> None:
    """Attention splits the hidden size over heads; some models only fail at the first forward."""
    hidden = next((getattr(config, k) for k in HIDDEN_SIZES if isinstance(getattr(config, k, None), int)), None)
    if hidden is None:
        return
    for key, heads in config.to_dict().items():
        if key.endswith("attention_heads") and isinstance(heads, int) and heads > 0 and hidden % heads:
            raise InterpruneError(
                f"hidden size {hidden} is not divisible by {key}={heads}; pick a size that is a multiple "
                f"of {heads} or change {key}"
            )


def model_class(config: PretrainedConfig) -> type[PreTrainedModel]:
    """The class the source was saved as (``architectures``), else the Auto class for its type."""
    for name in config.architectures or []:
        cls = getattr(transformers, name, None)
        if cls is not None:
            return cls
    for auto in (transformers.AutoModelForObjectDetection, transformers.AutoModel):
        try:
            return auto._model_mapping[type(config)]
        except KeyError:
            continue
    raise InterpruneError(f"transformers has no model class for config type {type(config).__name__}")


def build_model(config: PretrainedConfig, seed: int = 0) -> PreTrainedModel:
    """A freshly initialised model for ``config``; the seed makes its initial values reproducible."""
    torch.manual_seed(seed)
    try:
        model = model_class(config)(config)
    except InterpruneError:
        raise
    except Exception as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise InterpruneError(f"the target configuration cannot be built: {first}; change the --set values") from None
    return model.eval()


def load_model(source: str | os.PathLike, config: PretrainedConfig | None = None) -> PreTrainedModel:
    """Load a pretrained model with the class it was saved as, in the dtype it was saved in."""
    config = config or load_config(source)
    return model_class(config).from_pretrained(str(source)).eval()


def shrink(
    source: str | os.PathLike | PreTrainedModel,
    overrides: dict[str, Any] | None = None,
    method: str = "select",
    *,
    seed: int = 0,
    reinit: str | None = None,
    dtype: torch.dtype | None = None,
    calibration: str | os.PathLike | dict | None = None,
    calibration_size: int = 32,
    compensate: bool = False,
    layers: str = "first",
    rotate: bool = False,
) -> tuple[PreTrainedModel, TransferReport]:
    """Build the model ``source`` would be with ``overrides`` and fill it from ``source``'s weights.

    Everything that can be checked cheaply (method, keys, values, the target's architecture) is checked
    before the source's weights are read. The target keeps the source's dtype unless ``dtype`` is given.
    The importance methods (``magnitude``, ``calibrated``) and the options ``layers``, ``rotate`` and
    ``compensate`` are ``preserve.fill``'s; ``calibration`` is a data path (prepared by the source's own
    processor, ``calibration_size`` examples) or an already prepared batch of inputs.
    """
    from .preserve import PRESERVING, check_options, fill

    if method not in METHODS and method not in PRESERVING:
        raise InterpruneError(f"unknown method {method!r}; run 'interprune methods' to list them")
    preserving = method in PRESERVING or compensate or rotate or layers != "first"
    if preserving:
        check_options(method, calibration=calibration is not None, compensate=compensate, layers=layers,
                      rotate=rotate)
    config = source.config if isinstance(source, PreTrainedModel) else load_config(source)
    target = build_model(target_config(config, overrides or {}), seed)
    model = source if isinstance(source, PreTrainedModel) else load_model(source, config)
    dtype = dtype or model.dtype  # a bf16/fp16 source gives a bf16/fp16 target (and half the memory)
    if dtype != target.dtype:
        target = target.to(dtype)
    if preserving:
        if reinit:
            raise InterpruneError(f"method {method!r} fills every tensor from the source; it takes no reinit")
        inputs = calibration
        if calibration is not None and not isinstance(calibration, dict):
            from .calibration import calibration_inputs, model_processor  # reads data: only when asked to

            processor = model_processor(source if not isinstance(source, PreTrainedModel) else source.name_or_path)
            inputs = calibration_inputs(calibration, processor, count=calibration_size, seed=seed)
        # least squares in full precision, without changing a caller's half-precision model
        work = copy.deepcopy(model).float() if model.dtype != torch.float32 else model
        report, record = fill(work, target.float(), method, inputs=inputs, compensate_layers=compensate,
                              layers=layers, rotate=rotate, seed=seed)
        target = target.to(dtype)
        report.preserved = record.to_dict()
    else:
        report = transfer(model, target, method, seed=seed, reinit=reinit)
    report.source = str(getattr(source, "name_or_path", source))
    report.overrides = dict(overrides or {})
    return target, report


def save(
    model: PreTrainedModel,
    out: str | os.PathLike,
    *,
    report: TransferReport | None = None,
    source: str | os.PathLike | None = None,
    processor: Any = None,
    overwrite: bool = False,
) -> Path:
    """Write ``out`` atomically: a temporary sibling folder that is renamed only once complete.

    Besides ``config.json`` and ``model.safetensors``, it gets ``interprune.json`` (the report) and
    the source's processor files (or ``processor`` itself), so image processor settings travel with the weights.
    """
    out = Path(out)
    if out.exists() and not overwrite:
        raise InterpruneError(f"{out} already exists; choose another --out or pass --overwrite")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = make_temporary_sibling(out)
    try:
        model.save_pretrained(tmp)
        if report is not None:
            (tmp / "interprune.json").write_text(json.dumps(report.to_dict(), indent=1))
        if source is not None:
            copy_processor_files(source, tmp)
        if processor is not None:  # the processor actually used (its settings may differ from the source's)
            processor.save_pretrained(tmp)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def make_temporary_sibling(out: Path) -> Path:
    """A hidden folder beside ``out`` to write into and rename when complete, with the permissions a
    plain ``mkdir`` would give (``mkdtemp`` makes it private)."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)
    return tmp


def copy_processor_files(source: str | os.PathLike, dest: Path) -> None:
    """Copy image-processor/tokenizer files from a local folder, or fetch them for a Hub id."""
    folder = Path(source)
    if folder.is_dir():
        for name in PROCESSOR_FILES:
            if (folder / name).is_file():
                shutil.copy2(folder / name, dest / name)
        return
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    for name in PROCESSOR_FILES:
        try:
            shutil.copy2(hf_hub_download(str(source), name), dest / name)
        except EntryNotFoundError:  # the Hub model simply has no such file; other failures are real errors
            continue
