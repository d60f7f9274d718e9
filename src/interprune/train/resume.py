"""Exact resume: what a checkpoint must carry so a killed run continues as if it had never stopped.

Lightning restores the model, optimiser and loop counters. Bit-for-bit continuation needs more:

* the data order: the :class:`~interprune.data.loader.StepSampler` restarts at the checkpoint's step;
* the random state (dropout, and anything else drawing from the global generators): saved with the
  checkpoint, put back just before the first resumed step;
* the metrics rows so far (:class:`~interprune.train.metrics.MetricsTable`), and the training time of
  the earlier segments, so ``seconds`` counts all of them.

Checkpoints are saved after each validation (so a resumed run neither repeats nor skips one) and at the
end of training, atomically beside their destination (:class:`AtomicCheckpointIO`).
"""

from __future__ import annotations

import io
import os
import random
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.plugins.io import TorchCheckpointIO

from ..atomic import write_bytes
from ..errors import InterpruneError
from .metrics import MetricsTable

__all__ = ["AtomicCheckpointIO", "RunState", "CorruptCheckpoint", "check_checkpoint"]

KEY = "interprune"


class CorruptCheckpoint(InterpruneError):
    """A checkpoint that cannot be read (cut short, overwritten, not a checkpoint)."""


class AtomicCheckpointIO(TorchCheckpointIO):
    """``torch.save`` into memory, then an atomic write in the checkpoint's own folder: a kill or a full
    disk leaves the previous ``last.ckpt`` intact (Lightning's own writer goes through ``$TMPDIR``,
    which is a copy, not a rename, when that is another filesystem)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any = None) -> None:
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        write_bytes(path, buffer.getbuffer())


def check_checkpoint(path: Path) -> None:
    """Raise :class:`CorruptCheckpoint` (one line) unless ``path`` is a complete torch checkpoint.

    A torch checkpoint is a zip archive; checking its central directory and the CRC of every member reads
    the file once without unpickling the tensors."""
    try:
        if path.stat().st_size == 0:
            raise CorruptCheckpoint(f"{path} is empty")
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
        if bad is not None:
            raise CorruptCheckpoint(f"{path} is damaged (member {bad} fails its checksum)")
    except CorruptCheckpoint:
        raise
    except (OSError, zipfile.BadZipFile, EOFError, ValueError) as err:
        raise CorruptCheckpoint(f"{path} is cut short or not a checkpoint ({str(err).splitlines()[0]})") from None


def _rng_state() -> dict[str, Any]:
    """The global generators' states as tensors and plain values, so the checkpoint still loads with
    ``torch.load(weights_only=True)`` (Lightning's default)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
             "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


class RunState(Callback):
    """Saves ``path`` after every validation and at the end of training, with the sampler's position,
    the random state, the metrics table and the time spent; restores them all on resume."""

    def __init__(self, path: Path, sampler: Any, table: MetricsTable) -> None:
        self.path, self.sampler, self.table = path, sampler, table
        self.before = 0.0  # training seconds of earlier segments (up to their last checkpoint)
        self.segments = 1
        self.started: float | None = None
        self.saved_step = -1
        self._rng: dict[str, Any] | None = None

    @property
    def seconds(self) -> float:
        return self.before + (time.perf_counter() - self.started if self.started is not None else 0.0)

    def on_train_start(self, trainer: Any, module: Any) -> None:
        if self._rng is not None:  # as late as possible: nothing may draw between here and the first step
            _set_rng_state(self._rng)
            self._rng = None
        self.started = time.perf_counter()
        if hasattr(module, "started"):  # the module's wall_time column continues across segments
            module.started = time.time() - self.before

    def on_train_end(self, trainer: Any, module: Any) -> None:
        self._save(trainer)
        self.before, self.started = self.seconds, None

    def on_validation_end(self, trainer: Any, module: Any) -> None:
        if trainer.state.fn == "fit" and not trainer.sanity_checking:
            self._save(trainer)

    def _save(self, trainer: Any) -> None:
        if trainer.global_step == self.saved_step:
            return
        self.saved_step = trainer.global_step
        trainer.save_checkpoint(self.path, weights_only=False)  # the full state, to resume
        if trainer.is_global_zero:
            self.table.save()

    def on_save_checkpoint(self, trainer: Any, module: Any, checkpoint: dict[str, Any]) -> None:
        checkpoint[KEY] = {"rng": _rng_state(), "metrics": self.table.state(), "seconds": self.seconds,
                           "segments": self.segments}

    def on_load_checkpoint(self, trainer: Any, module: Any, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get(KEY)
        if state is None:
            raise CorruptCheckpoint(f"{self.path} was not written by interprune train; it cannot be resumed exactly")
        self.sampler.start = int(checkpoint["global_step"])
        self.saved_step = int(checkpoint["global_step"])
        self._rng = state["rng"]
        self.table.restore(state["metrics"])
        self.before, self.segments = float(state["seconds"]), int(state["segments"]) + 1

