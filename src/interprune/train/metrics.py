"""``metrics.csv``: one row per logged step, kept by us rather than by Lightning's CSV logger.

Lightning's ``CSVLogger`` starts its file afresh when a run resumes, so rows of earlier segments were lost.
This table lives in memory, travels inside every checkpoint (a resumed run continues exactly the rows
its checkpoint had, so no step is lost or written twice) and is rewritten atomically at each checkpoint
and at the end.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Any, Mapping

from lightning.pytorch.loggers.logger import Logger
from lightning.pytorch.utilities import rank_zero_only

from ..atomic import write_text

__all__ = ["MetricsTable", "read_metrics", "METRICS"]

METRICS = "metrics.csv"


class MetricsTable(Logger):
    """A Lightning logger whose rows (``{"step": k, metric: value, ...}``, merged by step) are data."""

    def __init__(self, path: str | os.PathLike) -> None:
        super().__init__()
        self.path = Path(path)
        self.rows: dict[int, dict[str, float]] = {}

    @property
    def name(self) -> str:
        return "metrics"

    @property
    def version(self) -> str:
        return ""

    @rank_zero_only
    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        # the final evaluation (``final_*``, see ``train.module``) goes into the summary, not the per-step table
        if step is None or any(k.startswith("final_") for k in metrics):
            return
        row = self.rows.setdefault(int(step), {})
        row.update({k: float(v) for k, v in metrics.items() if k != "epoch"})

    def state(self) -> list[dict[str, float]]:
        return [{"step": step, **row} for step, row in sorted(self.rows.items())]

    def restore(self, rows: list[dict[str, float]]) -> None:
        self.rows = {int(r["step"]): {k: v for k, v in r.items() if k != "step"} for r in rows}

    @rank_zero_only
    def save(self) -> None:
        rows = self.state()
        columns = ["step"] + sorted({k for r in rows for k in r} - {"step"})
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
        write_text(self.path, text.getvalue())

    @rank_zero_only
    def finalize(self, status: str) -> None:
        if status == "success":
            self.save()


def read_metrics(out: str | os.PathLike) -> list[dict[str, float]]:
    """A run's ``metrics.csv`` rows, with empty cells dropped."""
    path = Path(out) / METRICS
    if not path.is_file():
        return []
    with path.open() as handle:
        return [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(handle)]
