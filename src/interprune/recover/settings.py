"""Recovery settings as data: one validated object for ``interprune recover`` and ``shrink --recover``."""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field

from ..train.settings import LightningSettings


AUTO_LR = (0.2, 1e-3)  # the default peak learning rate: 0.2 / hidden size, capped (Adam's step scales as 1/width)


DETECTOR_LR = 1e-4  # detectors: the rate ``train`` fine-tunes them at (DETR's own recipe)


def auto_lr(width: int | None, detector: bool = False) -> float:
    """The default peak learning rate for a student of residual width ``width`` (unknown: the cap). The
    width rule was measured on a text encoder (MiniLM: 1e-4 barely moved a freshly cut student, 1e-3 kept
    the most); a detector keeps the rate its own training uses, not a width rule no detector was measured on."""
    if detector:
        return DETECTOR_LR
    scale, cap = AUTO_LR
    return cap if not width else min(cap, float(f"{scale / width:.2g}"))


class RecoverSettings(LightningSettings):
    """A short distillation: AdamW with warm-up and cosine decay, the output term plus hidden-state
    matching at block outputs on the teacher channels the student kept."""

    model_config = ConfigDict(extra="forbid")

    steps: int = Field(300, gt=0, description="optimiser steps")
    lr: float | None = Field(None, gt=0, description="peak learning rate; default 0.2 / the student's hidden size, "
                             "at most 1e-3 (1e-3 at width 192, 5.2e-4 at 384, 9.8e-5 at 2048); detectors 1e-4")
    weight_decay: float = Field(0.01, ge=0)
    warmup_steps: int | None = Field(None, ge=0, description="linear warm-up; default a tenth of the steps")
    lr_decay: Literal["constant", "cosine", "linear"] = "cosine"
    clip: float = Field(1.0, gt=0, description="gradient-norm clipping")
    batch_size: int = Field(16, gt=0)
    group_by_length: bool = Field(True, description="batch text examples of similar length together (less padding)")
    max_length: int = Field(128, gt=1, description="tokens per text example (longer ones are cut)")
    temperature: float = Field(2.0, gt=0, description="softening temperature of the logits KL")
    output_weight: float = Field(1.0, ge=0, description="weight of the output term")
    hidden_weight: float = Field(1.0, ge=0, description="weight of the hidden-state term (0: off)")
    train_mode: bool = Field(False, description="run the student in training mode (dropout, batch-norm updates); "
                             "by default it learns in evaluation mode, as it will be used")
    held_out: int = Field(32, ge=1, description="unlabelled examples held out to validate the distillation loss")
    val_every: int = Field(100, gt=0, description="validate (and checkpoint) every N steps")
    seed: int = 0
    workers: int = Field(0, ge=0)
