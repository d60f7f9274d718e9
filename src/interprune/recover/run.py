"""``interprune recover``: distil a shrunk model from its source on unlabelled inputs, for any family.

``OUT`` becomes a stock model folder (config, weights, processor files, ``interprune.json`` with a
``recovered`` record); the run itself lives in ``OUT/recover/`` as ``train`` writes its runs:
``metrics.csv``, ``tensorboard/``, ``checkpoints/last.ckpt`` (``resume`` continues from it exactly) and
``summary.json``, written last. Every bad input is one line before any weight is read: a teacher whose
outputs cannot be compared with the student's, data the model's processor cannot read, zero steps.
"""

from __future__ import annotations

import inspect
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from ..atomic import temporary_name, write_text
from ..errors import InterpruneError
from ..hf.config import hidden_size
from ..hf.models import check_writable, class_names, load_config, load_model, model_class
from ..hf.processors import copy_processor_files
from ..train.distill import kept_channels, residual_rotated
from .module import STATES, Matching, RecoverModule
from .settings import RecoverSettings

__all__ = ["recover", "check_pair", "RUN"]

RUN = "recover"  # the run folder inside OUT


def _family(config: Any, source: Any) -> str:
    """The kind of output the student gives, refusing families whose inputs are not images or text alone."""
    cls = model_class(config)
    params = inspect.signature(cls.forward).parameters
    if "input_features" in params or "input_values" in params:
        raise InterpruneError(f"{source} is a {config.model_type} model, which reads audio; recover distils on "
                              f"images or text")
    if "input_ids" in params and "pixel_values" in params:
        raise InterpruneError(f"{source} is a {config.model_type} model, which reads images and text together; "
                              f"recover distils models of one modality")
    name = cls.__name__
    if "ObjectDetection" in name:
        return "detection"
    return "logits" if ("Classification" in name or "LM" in name or "ForConditionalGeneration" in name) else "hidden"


def check_pair(small: str | os.PathLike, teacher: str | os.PathLike) -> tuple[Any, Any, str]:
    """Configs of student and teacher and the student's kind of output, once their outputs are known to be
    comparable: the same architecture class, the same classes or vocabulary."""
    s, t = load_config(small), load_config(teacher)
    kind = _family(s, small)
    cs, ct = model_class(s).__name__, model_class(t).__name__
    if cs != ct:
        raise InterpruneError(f"--teacher {teacher} is a {ct}, the student a {cs}: their outputs cannot be compared; "
                              f"give the model the student was shrunk from")
    if kind in ("detection", "logits") and ("Classification" in cs or kind == "detection"):
        have, want = class_names(t), class_names(s)
        if have != want:
            raise InterpruneError(f"--teacher {teacher} predicts {len(have)} classes {have[:4]}..., the student "
                                  f"{len(want)} {want[:4]}...: their outputs cannot be compared")
    elif kind == "logits":
        vs, vt = (getattr(getattr(c, "text_config", None) or c, "vocab_size", None) for c in (s, t))
        if vs != vt:
            raise InterpruneError(f"--teacher {teacher} has a vocabulary of {vt} tokens, the student {vs}: their "
                                  f"logits cannot be compared")
    return s, t, kind


def matching(small: str | os.PathLike, teacher: str | os.PathLike, s: Any, t: Any, kind: str) -> Matching:
    """What to compare, from the student's ``interprune.json``: the kept residual channels and layers."""
    kept = kept_channels(small, teacher)
    widths = (hidden_size(s), hidden_size(t))
    try:
        meta = json.loads((Path(small) / "interprune.json").read_text())
    except (OSError, ValueError):
        meta = {}
    turned = residual_rotated(meta)
    if kind == "hidden" and turned:
        raise InterpruneError(f"{small} was shrunk with --rotate residual: its hidden states mix the teacher's "
                              f"channels and cannot be compared with them; recover a shrink made without it")
    if kind == "hidden" and kept is None and widths[0] != widths[1]:
        raise InterpruneError(f"the student's hidden size is {widths[0]}, the teacher's {widths[1]}, and the "
                              f"student's interprune.json does not say it was shrunk from {teacher}: its last "
                              f"hidden states cannot be compared")
    stacks = (meta.get("preserved") or {}).get("layers") or {}
    layers: dict[str, list[int] | None] = {}
    for attr in STATES:
        side = attr.split("_")[0] if attr != "hidden_states" else None
        found = [v for k, v in stacks.items() if side is None or side in k]
        layers[attr] = found[0] if len(found) == 1 and (side is not None or len(stacks) == 1) else None
    return Matching(kind, kept, layers, num_labels=getattr(s, "num_labels", 0), states=not turned)


def recover(small: str | os.PathLike, teacher: str | os.PathLike, data: str | os.PathLike, out: str | os.PathLike,
            settings: RecoverSettings | None = None, *, resume: bool = False, overwrite: bool = False,
            progress: bool = True) -> dict | None:
    """Distil ``small`` from ``teacher`` on the unlabelled ``data`` and write the result to ``out``; returns
    the run summary (other processes of a multi-process run return None). An ``out`` that already holds
    anything (another model, ``small`` itself, an earlier run) is refused unless ``overwrite`` (or ``resume``,
    to continue the run there); with ``overwrite`` an earlier run in it starts again, and model files the new
    model does not write are removed when it is written, so the folder never mixes two models."""
    import lightning as L

    from ..hf.processors import model_processor
    from ..train.module import NonFiniteLoss
    from ..train.resume import check_checkpoint
    from ..train.run import _launching_process, _quiet, check_trainer
    from .data import loaders, open_unlabelled

    settings = settings or RecoverSettings()
    out = Path(out)
    run = out / RUN
    ckpt = run / "checkpoints" / "last.ckpt"
    lead = _launching_process()
    if lead and not resume:
        _check_out(out, run, overwrite)
    check_writable(out)
    check_trainer(settings)
    s_config, t_config, kind = check_pair(small, teacher)
    processor = model_processor(small)
    train_set, held_set, collate = open_unlabelled(data, processor, held_out=settings.held_out, seed=settings.seed,
                                                   max_length=settings.max_length)
    resuming = resume and ckpt.is_file()
    if resuming:
        check_checkpoint(ckpt)
    match = matching(small, teacher, s_config, t_config, kind)
    _quiet()
    L.seed_everything(settings.seed, workers=True, verbose=False)
    student = load_model(small, s_config, dtype=torch.float32).train()
    module = RecoverModule(student, load_model(teacher, t_config, dtype=torch.float32), match, settings)
    train_loader, held_loader = loaders(train_set, held_set, collate, batch_size=settings.batch_size,
                                        steps=settings.steps, seed=settings.seed, workers=settings.workers,
                                        group_by_length=settings.group_by_length)
    if lead and overwrite and not resume and run.exists():
        shutil.rmtree(run)  # asked for: the earlier run starts again
    trainer, state, table = _trainer(settings, run, ckpt, train_loader.sampler, lead, resuming, progress)
    if not resuming:
        trainer.validate(module, held_loader, verbose=False)
    try:
        trainer.fit(module, train_loader, held_loader, ckpt_path=str(ckpt) if resuming else None)
    except NonFiniteLoss as err:
        where = f"the last good checkpoint is {ckpt}" if ckpt.is_file() else "no checkpoint was written yet"
        raise InterpruneError(f"{err}; lower --lr ({where})") from None
    if settings.steps % settings.val_every:  # the last step was not evaluated (decided alike in every process):
        trainer.validate(module, held_loader, verbose=False)  # the summary's held-out loss is the final model's
    if not trainer.is_global_zero:
        return None
    summary = _summary(small, teacher, data, kind, trainer, state, table, module, match, settings)
    table.save()
    _write_model(student.eval(), small, out, summary, replace=overwrite)
    write_text(run / "summary.json", json.dumps(summary, indent=1))  # last: the run is complete
    return summary


def _summary(small: Any, teacher: Any, data: Any, kind: str, trainer: Any, state: Any, table: Any, module: Any,
             match: Any, settings: RecoverSettings) -> dict:
    """What the run did: its steps and time, the held-out loss before and after, what it matched."""
    rows = [r for r in table.state() if "val_loss" in r]
    return {"student": str(small), "teacher": str(teacher), "data": str(data), "kind": kind,
            "steps": int(trainer.global_step), "seconds": round(state.seconds, 2), "segments": state.segments,
            "val_loss_start": rows[0]["val_loss"] if rows else None,
            "val_loss_end": rows[-1]["val_loss"] if rows else None,
            "states_matched": sum(len(p) for p in (module.pairs or {}).values()),
            "kept_channels": match.kept is not None, "states_comparable": match.states, "lr": module.lr,
            "teacher_seconds": round(module.teacher.seconds, 2),
            "settings": settings.model_dump(mode="json")}


def _trainer(settings: RecoverSettings, run: Path, ckpt: Path, sampler: Any, lead: bool, resuming: bool,
             progress: bool) -> tuple[Any, Any, Any]:
    """``train``'s trainer and run folder: step progress, metrics table, exact-resume state and atomic
    checkpoints after every validation."""
    from ..train.metrics import METRICS, MetricsTable
    from ..train.resume import RunState
    from ..train.run import build_trainer, prepare_run_folder

    if lead:
        prepare_run_folder(run, resuming)
    table = MetricsTable(run / METRICS)
    state = RunState(ckpt, sampler, table)
    strategy = settings.strategy
    if strategy == "auto" and (settings.num_nodes > 1 or str(settings.devices).isdigit() and int(settings.devices) > 1):
        strategy = "ddp_find_unused_parameters_true"  # parts outside the loss (a pooler) get no gradient
    return build_trainer(settings, run, table, state, progress and lead, strategy), state, table


def _check_out(out: Path, run: Path, overwrite: bool) -> None:
    """Refuse an ``out`` that holds anything, unless ``overwrite``: recovering into another model's folder
    replaced that model, and a folder of other files got model files mixed in."""
    if overwrite or not out.exists() or (out.is_dir() and not any(out.iterdir())):
        return
    if run.is_dir() and any(run.iterdir()):
        raise InterpruneError(f"{out} already holds a recovery run; pass --resume to continue it, --overwrite to "
                              f"start again, or choose another --out")
    raise InterpruneError(f"{out} already exists; pass --overwrite to replace the model in it, or choose another "
                          f"--out")


# what a model folder's weights and config are written as: files of an earlier model that the new one does not
# write again (shards of another count, a .bin checkpoint) would be read with the new ones
MODEL_FILES = ("*.safetensors", "*.safetensors.index.json", "pytorch_model*.bin", "pytorch_model*.bin.index.json",
               "config.json", "generation_config.json")


def _write_model(student: Any, small: str | os.PathLike, out: Path, summary: dict, *, replace: bool = False) -> None:
    """The recovered model as a stock folder in ``out``: written beside it, then each file renamed into place
    (so ``out/recover/`` and anything else there stays); ``interprune.json`` keeps the shrink's record.
    ``replace``: model files of an earlier model in ``out`` that the new one does not write are removed."""
    tmp = temporary_name(out, "model")
    tmp.mkdir(parents=True)
    student.save_pretrained(tmp)
    if Path(small).resolve() != out.resolve():
        copy_processor_files(small, tmp)
    try:
        meta = json.loads((Path(small) / "interprune.json").read_text())
    except (OSError, ValueError):
        meta = {}
    meta["recovered"] = {k: v for k, v in summary.items() if k != "settings"}
    (tmp / "interprune.json").write_text(json.dumps(meta, indent=1))
    out.mkdir(parents=True, exist_ok=True)
    written = {f.name for f in tmp.iterdir()}
    stale = [f for pattern in MODEL_FILES for f in out.glob(pattern) if f.name not in written] if replace else []
    for file in stale:  # before the new files arrive: a kill in between leaves no folder of two models
        file.unlink()
    for file in sorted(tmp.iterdir(), key=lambda f: f.suffix == ".safetensors"):  # weights last
        if file.is_dir() and (out / file.name).is_dir():  # a module folder (1_Pooling/): a rename needs it gone
            shutil.rmtree(out / file.name)
        os.replace(file, out / file.name)
    tmp.rmdir()
