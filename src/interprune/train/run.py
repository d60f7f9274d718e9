"""``interprune train``: fine-tune a detection model on a COCO dataset and write a run folder.

A run folder holds TensorBoard logs, ``metrics.csv``, Lightning checkpoints (``--resume`` continues
from ``checkpoints/last.ckpt``), the final model as a loadable folder and ``summary.json``.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import time
import warnings
from pathlib import Path
from typing import Any

from ..data import DetectionData, make_loaders, open_dataset
from ..errors import InterpruneError
from ..models import (check_detector, count_parameters, load_config, load_detector, load_for_inference,
                      load_processor, save)
from . import batchnorm
from .module import DetectionModule, NonFiniteLoss
from .settings import TrainSettings

__all__ = ["train", "load_detector", "load_processor", "TrainSettings"]

CHECKPOINTS = "checkpoints"


def _loggers(out: Path) -> list[Any]:
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    return [TensorBoardLogger(out, name="tensorboard", version=""), CSVLogger(out, name="csv", version="")]


def _quiet() -> None:
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.pytorch.accelerators.cuda"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*number of training batches.*")


def read_metrics(out: Path) -> list[dict[str, float]]:
    """Lightning's CSV rows (one per logged step), with empty cells dropped."""
    path = Path(out) / "metrics.csv"
    if not path.is_file():
        return []
    with path.open() as handle:
        return [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(handle)]


def train(model: str | os.PathLike, data: str | os.PathLike | DetectionData, out: str | os.PathLike,
          settings: TrainSettings | None = None, *, resume: bool = False, images: str | None = None,
          progress: bool = True) -> dict[str, Any]:
    """Fine-tune ``model`` on ``data`` for ``settings.steps`` steps; returns (and writes) the summary."""
    import lightning as L
    from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint

    settings = settings or TrainSettings()
    out = Path(out)
    ckpt = out / CHECKPOINTS / "last.ckpt"
    if out.exists() and any(out.iterdir()) and not resume:
        raise InterpruneError(f"{out} already holds a run; pass --resume to continue it or choose another --out")
    dataset = data if isinstance(data, DetectionData) else open_dataset(data, images=images, seed=settings.seed)
    config = load_config(model)
    check_detector(config, str(model))
    processor = load_processor(model, config, settings.image_size)
    _quiet()
    L.seed_everything(settings.seed, workers=True, verbose=False)
    detector = load_detector(model, dataset.names, settings.seed, config).train()  # from_pretrained: eval mode
    if settings.from_scratch:  # DETR freezes batch norms (some versions the ResNet stem too): right when pretrained
        batchnorm.thaw(detector)
        for param in detector.parameters():
            param.requires_grad_(True)
    module = DetectionModule(detector, processor, lr=settings.lr, lr_backbone=settings.lr_backbone,
                             weight_decay=settings.weight_decay, map_every_val=settings.map_every_val)
    train_loader, valid_loader = make_loaders(
        dataset, processor, batch_size=settings.batch_size, val_batch_size=settings.val_batch_size,
        augment=settings.augment, copies=settings.copies, workers=settings.workers, seed=settings.seed)
    out.mkdir(parents=True, exist_ok=True)
    earlier = _earlier_rows(out) if resume else []  # Lightning's CSV logger starts its file afresh
    trainer = L.Trainer(
        max_steps=settings.steps, val_check_interval=settings.val_every, check_val_every_n_epoch=None,
        gradient_clip_val=settings.clip, accelerator=settings.accelerator, devices=settings.devices,
        num_nodes=settings.num_nodes, strategy=settings.strategy, precision=settings.precision,
        logger=_loggers(out), log_every_n_steps=settings.log_every, enable_progress_bar=progress,
        enable_model_summary=False, num_sanity_val_steps=0, deterministic="warn",
        callbacks=[ModelCheckpoint(out / CHECKPOINTS, save_last=True, every_n_train_steps=settings.val_every,
                                   save_top_k=0), LearningRateMonitor("step")],
    )
    started = time.time()
    try:
        trainer.fit(module, train_loader, valid_loader, ckpt_path=str(ckpt) if resume and ckpt.is_file() else None)
    except NonFiniteLoss as err:
        saved = f"the last good checkpoint is {ckpt}" if ckpt.is_file() else "no checkpoint had been written yet"
        raise InterpruneError(f"{err}; {saved}. Lower --lr or check the data") from None
    seconds = time.time() - started
    batchnorm.freeze(detector)  # the final evaluation and the saved model use the stock (frozen) layers
    module.compute_map = True
    final = trainer.validate(module, valid_loader, verbose=False)[0]
    if not trainer.is_global_zero:
        return {}
    _write_metrics(out, earlier)
    rows = read_metrics(out)
    val = [r["val_loss"] for r in rows if "val_loss" in r]
    summary = {
        "model": str(model), "data": dataset.source, "steps": int(trainer.global_step), "seconds": round(seconds, 2),
        "final_val_loss": float(final["val_loss"]), "best_val_loss": min(val + [float(final["val_loss"])]),
        "map": float(final["map"]), "map_50": float(final["map_50"]), "map_75": float(final["map_75"]),
        "map_per_class": {dataset.names[c]: v for c, v in getattr(module, "last_per_class", {}).items()
                          if 0 <= c < len(dataset.names)},
        "parameters": count_parameters(detector),
        "trainable_parameters": sum(p.numel() for p in detector.parameters() if p.requires_grad),
        "seed": settings.seed, "settings": settings.model_dump(),
    }
    save(detector, out / "model", processor=processor, overwrite=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def evaluate(model: str | os.PathLike, data: DetectionData, *, batch_size: int = 8) -> dict[str, float]:
    """Validation loss and COCO mAP of a saved detector on ``data``'s validation split, as is."""
    import lightning as L

    config, processor, detector = load_for_inference(model)
    names = [config.id2label.get(i) for i in range(config.num_labels)]
    if names != data.names:
        raise InterpruneError(f"{model} detects {names}, the dataset has {data.names}; evaluate on its own classes")
    module = DetectionModule(detector, processor)
    module.compute_map = True
    _, loader = make_loaders(data, processor, val_batch_size=batch_size, augment=False)
    _quiet()
    trainer = L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False, accelerator="auto",
                        devices=1)
    result = trainer.validate(module, loader, verbose=False)[0]
    return {key: float(result[key]) for key in ("val_loss", "map", "map_50", "map_75")}


def _csv_rows(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with path.open() as handle:
        return list(csv.DictReader(handle))


def _earlier_rows(out: Path) -> list[dict[str, str]]:
    """Rows of a run's earlier parts: the joined table of finished parts, then the logger's file of an
    interrupted one."""
    joined, last = _csv_rows(out / "metrics.csv"), _csv_rows(out / "csv" / "metrics.csv")
    end = max((float(r["step"]) for r in joined if r.get("step")), default=-1.0)
    return joined + [r for r in last if r.get("step") and float(r["step"]) > end]


def _write_metrics(out: Path, earlier: list[dict[str, str]]) -> None:
    """Write ``metrics.csv`` (where people look for it) from Lightning's ``csv/metrics.csv``, with the rows
    of the run's earlier parts in front when it was resumed."""
    rows = _csv_rows(out / "csv" / "metrics.csv")
    first = min((float(r["step"]) for r in rows if r.get("step")), default=float("inf"))
    rows = [r for r in earlier if r.get("step") and float(r["step"]) < first] + rows
    columns = sorted({k for r in rows for k in r}, key=lambda k: (k != "step", k))
    with (out / "metrics.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
