"""Shrink (or grow) a Hugging Face model: a source and config overrides in, a filled target out.

Everything that can be checked cheaply is checked before the source's weights are read: the method
and its options, the target config rebuilt through its class (``hf.config``), the target built and run
once on a dummy input (``hf.inputs``), the vocabulary against the tokenizer. Loading and saving live in
``hf.models``, the dimension plan in ``plan``, the tensor walk in ``weights.transfer`` and the
data-aware recipe in ``preserve.recipe``.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from typing import Any

import torch
from transformers import PretrainedConfig, PreTrainedModel

from ..errors import InterpruneError
from ..hf.config import HIDDEN_SIZES, target_config
from ..hf.inputs import check_target
from ..hf.models import build_model, load_config, load_model
from ..hf.processors import tokenizer_size
from ..plan import Plan, make_plan
from ..methods import METHODS, check_options
from ..preserve.recipe import fill
from .transfer import TransferReport, transfer

__all__ = ["shrink", "plan_for"]


def plan_for(source: str | os.PathLike | PreTrainedModel, overrides: dict[str, Any]) -> Plan:
    """The dimension plan of a shrink, from shapes only: both models are built without memory."""
    config = source.config if isinstance(source, PreTrainedModel) else load_config(source)
    target = build_model(_target_config(source, config, overrides), meta=True)
    model = source if isinstance(source, PreTrainedModel) else build_model(config, meta=True)
    return make_plan(model, target)


def _target_config(source: Any, config: PretrainedConfig, overrides: dict[str, Any]) -> PretrainedConfig:
    """The target's config. A model built in memory and never saved has no ``architectures``: its target is
    of its own class (a causal LM's target used to be built as the bare ``AutoModel``, without its head)."""
    wanted = target_config(config, overrides)
    if isinstance(source, PreTrainedModel) and not getattr(config, "architectures", None):
        wanted.architectures = [type(source).__name__]
    return wanted


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
    rotate: bool | str = False,
    calibration_batch: int | str | None = None,
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
    prepared batch of inputs, run ``calibration_batch`` examples at a time (all at once for None; ``"auto"``:
    ``preserve.calibration.auto_batch``) through
    the sequential engine (``walk``); ``budget`` bounds its stored activations in bytes (the rest spill to
    disk); ``device`` is where the data-aware math runs (``auto``: a GPU when there is one).
    """
    from ..progress import resolve_device

    device = resolve_device(device)  # a GPU asked for where there is none: refused before any work
    preserving = _check_request(method, calibration, calibration_batch, compensate, layers, rotate,
                                bool(reinit or choices))
    overrides = dict(overrides or {})
    config = source.config if isinstance(source, PreTrainedModel) else load_config(source)
    target = build_model(_target_config(source, config, overrides), seed)
    check_target(target, overrides)
    _check_vocabulary(source, config, target.config)
    model = source if isinstance(source, PreTrainedModel) else load_model(source, config)
    dtype = dtype or model.dtype  # a bf16/fp16 source gives a bf16/fp16 target (and half the memory)
    if preserving:  # refit in float32, stored in ``dtype``
        report = _preserve(source, model, target, method, calibration=calibration,
                           calibration_size=calibration_size, compensate=compensate, layers=layers, rotate=rotate,
                           seed=seed, run=Run(calibration_batch, budget, device, progress))
        target = target.to(dtype)
    else:
        target = target.to(dtype)
        try:
            report = transfer(model, target, method, seed=seed, reinit=reinit, choices=choices)
        except ValueError as err:
            raise InterpruneError(str(err)) from None
    report.source = str(getattr(source, "name_or_path", source))
    report.overrides = overrides
    return target, report


def _check_request(method: str, calibration: Any, calibration_batch: int | str | None, compensate: bool, layers: str,
                   rotate: bool | str, fixed: bool) -> bool:
    """The method and its options, before any work; True when the data-aware recipe fills the target.
    ``fixed``: the caller gave ``reinit`` or ``choices``, which only a plain transfer takes."""
    if calibration_batch != "auto" and (isinstance(calibration_batch, str) or (
            calibration_batch is not None and calibration_batch < 1)):
        raise InterpruneError(f"--calibration-batch must be at least 1, got {calibration_batch}")
    if method not in METHODS:
        raise InterpruneError(f"unknown method {method!r}; run 'interprune methods' to list them")
    preserving = check_options(method, calibration=calibration is not None, compensate=compensate, layers=layers,
                               rotate=rotate)
    if preserving and fixed:
        raise InterpruneError(f"method {method!r} with these options chooses its own units and fills every "
                              f"tensor from the source; it takes no reinit or choices")
    return preserving


def _preserve(source: Any, model: PreTrainedModel, target: PreTrainedModel, method: str, *,
              calibration: Any, calibration_size: int, compensate: bool, layers: str, rotate: bool | str,
              seed: int, run: "Run") -> TransferReport:
    """Fill ``target`` (in place, in float32) with the data-aware recipe, on calibration inputs from ``calibration``."""
    from ..allocator import release_promptly

    release_promptly()  # thousands of activations freed and made again: keep the heap from fragmenting
    from ..preserve.calibration import auto_batch, calibration_batches, on_device
    from ..walk import Batches

    inputs: Any = None
    if isinstance(calibration, dict):  # a prepared batch: split here
        batch = auto_batch(calibration) if run.batch == "auto" else run.batch
        inputs = Batches.of(on_device(calibration, run.device), batch)
    elif calibration is not None:
        from ..hf.processors import model_processor  # reads data: only when asked to

        processor = model_processor(source if not isinstance(source, PreTrainedModel) else source.name_or_path)
        inputs = calibration_batches(calibration, processor, count=calibration_size, seed=seed, batch=run.batch,
                                     device=run.device)
    _check_budget(run.budget, model.config, inputs)
    # least squares in full precision: a half-precision source stays half and each module computes with
    # float32 copies of its own tensors while it runs (``precision.py``), not a float32 copy of the whole model
    ours = not isinstance(source, PreTrainedModel)  # loaded here: moved in place, not copied
    work = model
    if run.device != "cpu":
        work = model if ours else copy.deepcopy(model)
        work, target = work.to(run.device), target.to(run.device)
    handles = _in_float32(work, inputs)
    try:
        report, record = fill(work, target.float(), method, inputs=inputs, compensate_layers=compensate,
                              layers=layers, rotate=rotate, seed=seed, budget=run.budget, progress=run.progress)
    finally:
        for handle in handles:
            handle.remove()
    target.cpu()
    if calibration is not None and not isinstance(calibration, dict):
        record.calibration = str(calibration)
    report.preserved = record.to_dict()
    return report


def _in_float32(model: PreTrainedModel, inputs: Any) -> list[Any]:
    """``precision.compute_in_float32`` on ``model``, checked on one calibration example, from the least
    memory to the most: every module converts its own tensors while it runs; else the modules outside every
    stack are float32 for the whole recipe (a detector whose parent reads its query embeddings' weight); else
    (a block that reads a child's half-precision weight directly) the model is converted in place, undone
    afterwards. The check fails where an operation gets a half-precision tensor or an error."""
    from ..precision import HALF, compute_in_float32, computes_in_float32, to_float32
    from ..walk import split_batch

    if inputs is None or not any(t.dtype in HALF for t in model.parameters()):
        return compute_in_float32(model)
    example = split_batch(inputs if isinstance(inputs, dict) else inputs[0], 1)[0]
    for outer in (False, True):
        handles = compute_in_float32(model, outer=outer)
        if computes_in_float32(model, example):
            return handles
        for handle in handles:
            handle.remove()
    return [to_float32(model)]


@dataclass(frozen=True)
class Run:
    """How the data-aware recipe runs: mini-batch size, memory budget (bytes), device, progress callback."""

    batch: int | str | None
    budget: int | None
    device: str
    progress: Any


def _check_budget(budget: int | None, config: PretrainedConfig, batches: Any) -> None:
    """The engine keeps at least one block boundary of one mini-batch in memory: refuse a budget below it."""
    if budget is None or batches is None:
        return
    config = getattr(config, "text_config", None) or config
    width = next((getattr(config, k) for k in HIDDEN_SIZES if isinstance(getattr(config, k, None), int)), None)
    first = next((v for v in batches[0].values() if isinstance(v, torch.Tensor) and v.dim() > 1), None)
    if width is None or first is None:
        return
    examples = first.shape[0]
    tokens = first.shape[1] if first.dim() == 2 else (first.shape[-2] // 32) * (first.shape[-1] // 32)
    needed = examples * tokens * width * 4
    if budget < needed:
        size = f"{needed / 1e6:.1f}MB" if needed >= 10**5 else f"{needed}B"
        raise InterpruneError(f"--memory-budget {budget:,} bytes is too small for one block boundary of a mini-batch "
                              f"({examples} examples x {tokens} positions x {width} channels in float32); give at "
                              f"least {size} or a smaller --calibration-batch")


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
