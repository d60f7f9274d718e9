"""Training settings as data: one validated object shared by ``interprune train`` and sweeps."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class LightningSettings(BaseModel):
    """Where and how Lightning runs: what ``train`` and ``recover`` share, checked by ``check_trainer``."""

    model_config = ConfigDict(extra="forbid")

    accelerator: str = "auto"
    devices: int | str = "auto"
    num_nodes: int = Field(1, gt=0)
    strategy: str = "auto"
    precision: str | None = None
    log_every: int = Field(10, gt=0)


class TrainSettings(LightningSettings):
    """Hyper-parameters default to the paper's (DETR's own): AdamW, lr 1e-4, backbone lr 1e-5,
    weight decay 1e-4, gradient clipping 0.1, batches of 4 (training) and 2 (validation), 3000 steps."""

    model_config = ConfigDict(extra="forbid")

    steps: int = Field(3000, gt=0, description="optimiser steps")
    lr: float = Field(1e-4, gt=0)
    lr_backbone: float = Field(1e-5, ge=0)
    warmup_steps: int = Field(0, ge=0, description="linear learning-rate warm-up over the first N steps")
    lr_decay: Literal["constant", "cosine", "linear"] = Field(
        "constant", description="learning-rate decay after warm-up: constant (the paper's), cosine or linear")
    lr_end: float = Field(0.0, ge=0, le=1, description="final learning rate as a fraction of the peak, for a decay")
    weight_decay: float = Field(1e-4, ge=0)
    clip: float = Field(0.1, gt=0, description="gradient-norm clipping")
    batch_size: int = Field(4, gt=0)
    val_batch_size: int = Field(2, gt=0)
    val_every: int = Field(100, gt=0, description="validate every N steps")
    map_every_val: bool = Field(False, description="compute COCO mAP at every validation, not only at the end")
    seed: int = 0
    augment: bool = True
    copies: int = Field(1, gt=0, description="augmented copies of each training image per epoch")
    image_size: int | None = Field(None, gt=15, description="shortest image edge; default: the model's processor")
    workers: int = Field(2, ge=0, description="data-loading worker processes")
    num_queries: int | None = Field(None, gt=0, description="give the model N object queries before training "
                                    "(a shrink with --set num_queries=N, written to the run's start/): for images "
                                    "with more objects than the model has queries")
    from_scratch: bool = Field(False, description="the backbone trains from scratch: all its layers learn and "
                               "its batch norms are live (frozen again when saved)")

    # Distillation (train/criterion.py): with a teacher, loss = the task loss + these weighted terms.
    teacher: str | None = Field(None, description="model folder or Hub id of a (fine-tuned) teacher to distil "
                                "from; frozen, never saved with the student")
    distill_data: str | None = Field(None, description="folder of unlabelled images used for the distillation "
                                     "term only (needs --teacher)")
    distill_temperature: float = Field(2.0, gt=0, description="softening temperature of the class KL")
    distill_class: float = Field(1.0, ge=0, description="weight of the per-query class KL")
    distill_boxes: float = Field(5.0, ge=0, description="weight of the per-query box L1")
    distill_giou: float = Field(2.0, ge=0, description="weight of the per-query box GIoU term")
    distill_features: float = Field(0.0, ge=0, description="weight of the feature term (encoder memory and "
                                    "decoder states, MSE); 0 switches it off")
    distill_matching: Literal["auto", "none", "hungarian"] = Field(
        "auto", description="pair student and teacher queries: none (query i is query i, for a student shrunk "
        "from its teacher), hungarian, or auto (none when the query counts agree)")

