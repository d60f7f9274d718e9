"""A progress bar for training by steps: ``step k/N``, steps per second and time left.

Lightning's bar counts batches per epoch, which for a run of N steps over a small dataset reads
``Epoch 2/-2``: neither where the run is nor when it ends. This one counts optimiser steps over the whole run.
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm, _update_n

__all__ = ["StepProgressBar"]


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
