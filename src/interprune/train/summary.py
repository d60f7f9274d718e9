"""A run's results as one typed object: written by ``train``, read by sweeps, the report and the demo.

``summary.json`` is written atomically as a run's very last act, so its presence means "finished". A
file that exists but does not parse (a copy cut short, an edit) is :class:`UnreadableSummary`: one line
naming it, and a sweep redoes that run's end from its checkpoint instead of stopping.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError

from ..atomic import write_text
from ..errors import InterpruneError
from .settings import TrainSettings

__all__ = ["RunSummary", "TeacherCost", "UnreadableSummary", "SUMMARY"]

SUMMARY = "summary.json"


class UnreadableSummary(InterpruneError):
    """``summary.json`` exists but is empty, cut short or not a run summary."""


class TeacherCost(BaseModel):
    """What learning from a teacher cost: its forward passes in this run and its own fine-tuning run, so a
    report can count the whole pipeline rather than the student alone."""

    model: str
    forward_seconds: float
    forward_calls: int
    seconds_per_step: float | None = None
    fine_tune_steps: int | None = None
    fine_tune_seconds: float | None = None


class RunSummary(BaseModel):
    """Final and best validation loss, COCO mAP and what the run cost, for one training run."""

    model_config = ConfigDict(extra="forbid")

    model: str
    data: str
    steps: int
    seconds: float  # training time of every segment of the run, up to its checkpoints (see train.resume)
    segments: int = 1  # 1 + how many times the run was resumed
    final_val_loss: float
    best_val_loss: float
    map: float
    map_50: float
    map_75: float
    map_per_class: dict[str, float] = {}
    unmeasured_classes: list[str] = []  # no validation boxes: no AP can be measured, so none in map_per_class
    parameters: int
    trainable_parameters: int
    seed: int
    settings: TrainSettings
    teacher: TeacherCost | None = None  # set when the run distilled from a teacher
    start_fingerprint: str | None = None  # the starting model's ``models.fingerprint`` (set by sweeps)
    copied_from: str | None = None  # a sweep run whose start and settings were identical: its results, not rerun

    def write(self, run: str | os.PathLike) -> Path:
        """Write ``run/summary.json`` atomically."""
        return write_text(Path(run) / SUMMARY, json.dumps(self.model_dump(mode="json"), indent=1))

    @classmethod
    def read(cls, run: str | os.PathLike) -> "RunSummary":
        path = Path(run) / SUMMARY
        try:
            return cls.model_validate_json(path.read_bytes())
        except FileNotFoundError:
            raise InterpruneError(f"{path}: no run summary; the run has not finished") from None
        except (OSError, ValidationError) as err:
            what = "empty" if path.is_file() and path.stat().st_size == 0 else _first_problem(err)
            raise UnreadableSummary(f"{path} is unreadable ({what})") from None

    @classmethod
    def find(cls, run: str | os.PathLike) -> "RunSummary | None":
        """The run's summary, ``None`` when it has none yet; :class:`UnreadableSummary` when it is broken."""
        return cls.read(run) if (Path(run) / SUMMARY).is_file() else None


def _first_problem(err: Exception) -> str:
    if isinstance(err, ValidationError):
        first = err.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        return f"{where}: {first.get('msg')}" if where else str(first.get("msg"))
    return str(err).splitlines()[0]
