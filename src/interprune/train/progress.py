"""Progress that fits where it goes: bars on a terminal, plain lines in a log file.

On a terminal, :class:`StepProgressBar` counts optimiser steps over the whole run (``step k/N``, steps per
second, time left): Lightning's own bar counts batches per epoch, which for a run of N steps over a small
dataset reads ``Epoch 2/-2``. Anywhere else (a file, a pipe, a CI log) bars are wrong: Lightning passes
``disable=False`` to tqdm, which turns off tqdm's own terminal check, so every redraw of a validation bar lands
in the file with carriage returns and cursor codes (7.5 KB in 128 redraws for 40 short steps). There :class:`StepProgressLog`
writes one line every N steps and one per validation, and nothing else.
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

from lightning.pytorch.callbacks import Callback, TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm, _update_n

from .module import FINAL

__all__ = ["StepProgressBar", "StepProgressLog", "progress_callbacks", "duration"]


def duration(seconds: float) -> str:
    """``42 s``, ``7.5 min``, ``2.3 h``: precise enough for an estimate, short enough for a log line."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def progress_callbacks(progress: bool, every: int, stream: TextIO | None = None) -> list[Callback]:
    """The progress callback for where the output goes: a bar when ``stream`` (default stdout, where
    Lightning's bars write) is a terminal, lines every ``every`` steps otherwise, none without ``progress``."""
    if not progress:
        return []
    stream = stream or sys.stdout
    return [StepProgressBar()] if stream.isatty() else [StepProgressLog(every, stream)]


class StepProgressBar(TQDMProgressBar):
    """One bar for the whole run (resumed runs start at the step they resume from)."""

    STEP_FORMAT = "step {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}{postfix}]"

    def init_train_tqdm(self) -> Tqdm:
        bar = super().init_train_tqdm()
        bar.bar_format, bar.unit = self.STEP_FORMAT, "step"
        return bar

    def on_train_epoch_start(self, trainer: Any, *_: Any) -> None:
        bar = self.train_progress_bar
        if trainer.current_epoch and bar.total:  # a new pass over the data, the same run
            return
        bar.reset(total=trainer.max_steps if trainer.max_steps > 0 else None)
        bar.initial = bar.n = trainer.global_step

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        bar = self.train_progress_bar
        if self._should_update(trainer.global_step, bar.total or 0) or trainer.global_step == bar.total:
            _update_n(bar, trainer.global_step)
            bar.set_postfix(self.get_metrics(trainer, pl_module))

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if not self.train_progress_bar.disable:
            self.train_progress_bar.set_postfix(self.get_metrics(trainer, pl_module))

    def get_metrics(self, trainer: Any, pl_module: Any) -> dict[str, Any]:
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)
        return metrics


class StepProgressLog(Callback):
    """``step 20/40 (3.1 step/s, 6 s left): train_loss 27.1`` every ``every`` steps and at the last, and
    ``validation at step 20: val_loss 25.3`` after each validation: whole lines, flushed, nothing redrawn."""

    def __init__(self, every: int = 10, stream: TextIO | None = None, clock=time.monotonic) -> None:
        self.every, self.stream, self.clock = every, stream, clock
        self._start: tuple[float, int] | None = None

    def _print(self, line: str) -> None:
        stream = self.stream or sys.stdout
        stream.write(line + "\n")
        stream.flush()

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        self._start = (self.clock(), trainer.global_step)  # a resumed run is timed from where it resumed

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        step, total = trainer.global_step, trainer.max_steps
        if not trainer.is_global_zero or (step % self.every and step != total):
            return
        rate = ""
        if self._start is not None and step > self._start[1]:
            per_second = (step - self._start[1]) / max(self.clock() - self._start[0], 1e-9)
            rate = f" ({per_second:.2f} step/s, {duration((total - step) / per_second)} left)" if total > 0 else ""
        losses = {k: v for k, v in trainer.progress_bar_metrics.items() if k.startswith("train_")}
        self._print(f"step {step}/{total if total > 0 else '?'}{rate}{_values(losses)}")

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        if not trainer.sanity_checking:
            self._evaluated(trainer, f"validation at step {trainer.global_step}", "")

    def on_test_end(self, trainer: Any, pl_module: Any) -> None:  # the final evaluation (train.module)
        self._evaluated(trainer, f"final validation at step {trainer.global_step}", FINAL)

    def _evaluated(self, trainer: Any, when: str, prefix: str) -> None:
        if trainer.is_global_zero:
            names = {f"{prefix}val_loss": "val_loss", f"{prefix}map": "mAP", f"{prefix}map_50": "mAP@50"}
            self._print(when + _values({names[k]: v for k, v in trainer.callback_metrics.items() if k in names}))


def _values(metrics: dict[str, Any]) -> str:
    """``: train_loss 27.1, mAP 0.041``: losses to 4 significant digits, mAP (0..1) to 3 decimals."""
    shown = [f"{k} {float(v):.3f}" if k.startswith("mAP") else f"{k} {float(v):.4g}" for k, v in metrics.items()]
    return (": " + ", ".join(shown)) if shown else ""
