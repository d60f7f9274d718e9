"""Set up distillation for a training run: the teacher, the criterion, and what the teacher cost.

The loss math lives in ``criterion.py``; this module knows about model folders: it loads the teacher
(float32, eval mode, frozen), checks that it detects the dataset's classes before any training, reads which
teacher channels the student kept (when the student was shrunk from this teacher with a dimension plan) and
finds the teacher's own fine-tuning cost (the run folder it came from), so reports count the whole pipeline.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from ..errors import InterpruneError
from ..hf.config import hidden_size
from ..hf.models import check_detector, class_names, load_config, load_model
from .criterion import DistillCriterion, DistillWeights, Teacher
from .settings import TrainSettings
from .summary import RunSummary, TeacherCost, UnreadableSummary

__all__ = ["make_distillation", "kept_channels", "residual_rotated", "teacher_summary"]


def load_teacher(source: str | os.PathLike, names: list[str]) -> Teacher:
    """The teacher, checked before any work: a detector that knows exactly the dataset's classes."""
    config = load_config(source)
    check_detector(config, str(source), "--teacher ")
    have = class_names(config)
    if have != names:
        raise InterpruneError(f"--teacher {source} detects {have}, the dataset has {names}; give a teacher "
                              "fine-tuned on this dataset (e.g. runs/full/model from 'interprune train')")
    return Teacher(load_model(source, config, dtype=torch.float32), name=str(source))


def kept_channels(student: str | os.PathLike, teacher: str | os.PathLike) -> torch.Tensor | None:
    """The teacher's residual channels the student kept, when the student's ``interprune.json`` says it was
    shrunk from this very teacher and records the dimension plan's choice for the residual stream."""
    try:
        meta = json.loads((Path(student) / "interprune.json").read_text())
    except (OSError, ValueError):
        return None
    source, choices = meta.get("source"), meta.get("choices") or {}
    if not source or "residual" not in choices or Path(source).resolve() != Path(teacher).resolve():
        return None
    if residual_rotated(meta):  # the choice indexes coordinates of a turned stream, not the teacher's channels
        return None
    kept = torch.as_tensor(choices["residual"], dtype=torch.long)
    return kept if bool((kept >= 0).all()) else None  # -1 marks a new channel (grown): no teacher counterpart


def residual_rotated(meta: dict) -> bool:
    """Whether the shrink turned the residual stream (``--rotate residual``): the student's channels are then
    mixtures of the teacher's, and no teacher channel is a student channel."""
    return "residual" in ((meta.get("preserved") or {}).get("rotated") or [])


def make_distillation(settings: TrainSettings, student_source: str | os.PathLike, student: Any,
                      names: list[str]) -> DistillCriterion:
    """The task loss plus distillation from ``settings.teacher``, as the run's criterion."""
    assert settings.teacher
    teacher = load_teacher(settings.teacher, names)
    weights = DistillWeights(classes=settings.distill_class, boxes=settings.distill_boxes,
                             giou=settings.distill_giou, features=settings.distill_features,
                             temperature=settings.distill_temperature)
    widths = (hidden_size(student.config), hidden_size(teacher.model.config))
    kept = kept_channels(student_source, settings.teacher) if settings.distill_features > 0 else None
    if settings.distill_features > 0 and kept is None and None in widths:
        raise InterpruneError("--distill-features: cannot tell the hidden sizes of student and teacher; set it to 0")
    return DistillCriterion(teacher, student.config.num_labels, weights, matching=settings.distill_matching,
                            widths=widths if None not in widths else None, kept_channels=kept)


def teacher_summary(criterion: DistillCriterion, steps: int) -> TeacherCost:
    """What the teacher cost: its forward passes during this run, and its own fine-tuning run (the
    ``summary.json`` beside its model folder, as ``interprune train`` and sweeps write them) when known."""
    teacher = criterion.teacher
    try:
        done = RunSummary.find(Path(teacher.name).parent)
    except UnreadableSummary:
        done = None
    return TeacherCost(model=teacher.name, forward_seconds=round(teacher.seconds, 3), forward_calls=teacher.calls,
                       seconds_per_step=round(teacher.seconds / steps, 4) if steps else None,
                       fine_tune_steps=done.steps if done else None, fine_tune_seconds=done.seconds if done else None)
