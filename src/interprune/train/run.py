"""``interprune train``: fine-tune a detection model on a COCO dataset and write a run folder.

A run folder holds TensorBoard logs, ``metrics.csv``, ``checkpoints/last.ckpt`` (``--resume`` continues
from it exactly, see ``train.resume``), the final model as a loadable folder and ``summary.json``
(``train.summary``). Every file is written atomically beside its destination, the summary last.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Any

from ..atomic import clean_stale
from ..data import DetectionData, make_loaders, open_dataset
from ..errors import InterpruneError
from ..hf.models import (check_detector, class_names, count_parameters, load_config, load_detector, load_for_inference,
                         save)
from ..hf.processors import load_processor
from . import batchnorm
from .distill import make_distillation, teacher_summary
from .metrics import METRICS, MetricsTable
from .module import FINAL, DetectionModule, NonFiniteLoss
from .announce import start_lines, unmeasured_classes
from .progress import progress_callbacks
from .queries import queries_warning, with_queries
from .resume import AtomicCheckpointIO, RunState, check_checkpoint
from .settings import LightningSettings, TrainSettings
from .summary import SUMMARY, RunSummary

__all__ = ["train", "evaluate", "check_trainer"]

CHECKPOINTS = "checkpoints"
TRAINER_FIELDS = ("accelerator", "devices", "num_nodes", "strategy", "precision")  # read by Lightning itself


def _quiet() -> None:
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.pytorch.accelerators.cuda"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*number of training batches.*")
    # The StepSampler makes the loader resumable from the step alone; Lightning cannot see that.
    warnings.filterwarnings("ignore", message=".*dataloader is not resumable.*")
    # Lightning 2.6 flattens batches with torch's deprecated LeafSpec: printed by every run, nothing we can change
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)` is deprecated.*",
                            category=FutureWarning)


def check_trainer(settings: LightningSettings) -> None:
    """Check ``accelerator``, ``devices``, ``num_nodes``, ``strategy`` and ``precision`` the way Lightning
    reads them, before any data or model is loaded: building a ``Trainer`` only validates them."""
    import lightning as L

    _quiet()
    try:
        L.Trainer(accelerator=settings.accelerator, devices=settings.devices, num_nodes=settings.num_nodes,
                  strategy=settings.strategy, precision=settings.precision, logger=False, enable_checkpointing=False,
                  enable_progress_bar=False, enable_model_summary=False)
    except Exception as err:  # Lightning raises MisconfigurationException, ValueError, RuntimeError, TypeError
        detail = " ".join(line.strip() for line in str(err).splitlines() if line.strip()) or type(err).__name__
        given = " ".join(f"--{k.replace('_', '-')} {getattr(settings, k)}" for k in TRAINER_FIELDS
                         if getattr(settings, k) != LightningSettings.model_fields[k].default) or "the defaults"
        raise InterpruneError(f"{given}: {detail}") from None


def _launching_process() -> bool:
    """Whether this is the first process of a run: not one Lightning launches for DDP (the same command with
    ``LOCAL_RANK`` set), nor one that torchrun, SLURM or another node started beside it."""
    ranks = ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "SLURM_PROCID")
    return all(os.environ.get(name, "0") in ("", "0") for name in ranks)


def train(model: str | os.PathLike, data: str | os.PathLike | DetectionData, out: str | os.PathLike,
          settings: TrainSettings | None = None, *, resume: bool = False, images: str | None = None,
          progress: bool = True) -> RunSummary | None:
    """Fine-tune ``model`` on ``data`` for ``settings.steps`` steps; returns (and writes) the summary.

    With ``resume`` a run continues from ``checkpoints/last.ckpt`` exactly as if it had not stopped (same
    data order, random state and metrics rows; see ``train.resume``), or starts afresh when there is none.
    Other processes of a multi-process run return ``None``; the first writes the run folder.
    """
    settings = settings or TrainSettings()
    out = Path(out)
    ckpt = out / CHECKPOINTS / "last.ckpt"
    lead = _launching_process()
    resuming = _check_run(out, settings, resume=resume, lead=lead)
    dataset = data if isinstance(data, DetectionData) else open_dataset(data, images=images, seed=settings.seed)
    if settings.num_queries is not None:  # grown by a shrink into out/start, once; resumed runs reuse it
        config = load_config(model)
        check_detector(config, str(model))
        model = with_queries(model, config, settings.num_queries, out, settings.seed)
    detector, processor, criterion = _load(model, dataset, settings)
    module = DetectionModule(detector, processor, lr=settings.lr, lr_backbone=settings.lr_backbone,
                             weight_decay=settings.weight_decay, map_every_val=settings.map_every_val,
                             warmup_steps=settings.warmup_steps, lr_decay=settings.lr_decay, lr_end=settings.lr_end,
                             criterion=criterion)
    train_loader, valid_loader = _loaders(dataset, processor, settings)
    sampler = (train_loader["labelled"] if isinstance(train_loader, dict) else train_loader).sampler
    if lead:
        prepare_run_folder(out, resuming)
    table = MetricsTable(out / METRICS)
    state = RunState(ckpt, sampler, table)  # the sampler's position is part of the run's state (exact resume)
    trainer = build_trainer(settings, out, table, state, progress and lead)
    if lead:
        _announce(model, dataset, settings, trainer, resuming)
    if not resuming:  # validate at step 0: every curve starts from what the initialisation inherited
        trainer.validate(module, valid_loader, verbose=False)
    try:
        trainer.fit(module, train_loader, valid_loader, ckpt_path=str(ckpt) if resuming else None)
    except NonFiniteLoss as err:
        saved = f"the last good checkpoint is {ckpt}" if ckpt.is_file() else "no checkpoint had been written yet"
        raise InterpruneError(f"{err}; {saved}. Lower --lr or check the data") from None
    batchnorm.freeze(detector)  # the final evaluation and the saved model use the stock (frozen) layers
    final = trainer.test(module, valid_loader, verbose=False)[0]  # the module's final evaluation, with mAP
    if not trainer.is_global_zero:
        return None
    summary = _summary(str(model), dataset, settings, trainer, state, module, final, criterion)
    table.save()
    save(detector, out / "model", processor=processor, overwrite=True)
    summary.write(out)  # last: its presence means the run is complete
    return summary


def _check_run(out: Path, settings: TrainSettings, *, resume: bool, lead: bool) -> bool:
    """Everything about the run folder and settings that can fail before loading; whether it resumes."""
    if lead and out.exists() and any(out.iterdir()) and not resume:
        raise InterpruneError(f"{out} already holds a run; pass --resume to continue it or choose another --out")
    check_trainer(settings)
    if settings.distill_data and not settings.teacher:
        raise InterpruneError("--distill-data needs --teacher: unlabelled images only carry a distillation term")
    ckpt = out / CHECKPOINTS / "last.ckpt"
    resuming = resume and ckpt.is_file()
    if resuming:
        check_checkpoint(ckpt)
    return resuming


def _load(model: str | os.PathLike, dataset: DetectionData, settings: TrainSettings) -> tuple[Any, Any, Any]:
    """The detector to train (for the dataset's classes), its processor and the distillation criterion."""
    import lightning as L

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
    criterion = make_distillation(settings, model, detector, dataset.names) if settings.teacher else None
    return detector, processor, criterion


def _loaders(dataset: DetectionData, processor: Any, settings: TrainSettings) -> tuple[Any, Any]:
    """Training loader (paired with unlabelled images when distilling on them) and validation loader."""
    train_loader, valid_loader = make_loaders(
        dataset, processor, batch_size=settings.batch_size, val_batch_size=settings.val_batch_size,
        augment=settings.augment, copies=settings.copies, workers=settings.workers, seed=settings.seed,
        steps=settings.steps)
    if settings.distill_data:  # Lightning pairs the two loaders, cycling the shorter one
        from ..data.images import image_loader

        train_loader = {"labelled": train_loader, "unlabelled": image_loader(
            settings.distill_data, processor, batch_size=settings.batch_size, augment=settings.augment,
            workers=settings.workers, seed=settings.seed)}
    return train_loader, valid_loader


def prepare_run_folder(out: Path, resuming: bool) -> None:
    """The run folder, cleaned of what killed earlier segments left half-written."""
    (out / CHECKPOINTS).mkdir(parents=True, exist_ok=True)
    for folder in (out, out / CHECKPOINTS):
        clean_stale(folder)
    if not resuming:  # a fresh start: nothing of an earlier attempt may be mistaken for this run's
        for name in (METRICS, SUMMARY):
            (out / name).unlink(missing_ok=True)


def _announce(model: str | os.PathLike, dataset: DetectionData, settings: TrainSettings, trainer: Any,
              resuming: bool) -> None:
    """Before any training: what was read, what will happen, and what cannot work (too few queries)."""
    config = load_config(model)
    recreated = class_names(config) != dataset.names
    device = f"{type(trainer.accelerator).__name__.removesuffix('Accelerator').lower()} x {trainer.num_devices}"
    lines = start_lines(dataset, config, str(model), settings, recreated=recreated, resuming=resuming, device=device)
    warning = queries_warning(dataset, config)
    print("\n".join(lines + ([warning] if warning else [])), flush=True)


def build_trainer(settings: LightningSettings, out: Path, table: MetricsTable, state: RunState, progress: bool,
                   strategy: str | None = None) -> Any:
    """The trainer every run uses (``settings`` also has ``steps``, ``val_every`` and ``clip``): exact-resume
    state, the metrics table, atomic checkpoints, progress fitted to where the output goes."""
    import lightning as L
    from lightning.pytorch.callbacks import LearningRateMonitor, ProgressBar
    from lightning.pytorch.loggers import TensorBoardLogger

    shown = progress_callbacks(progress, settings.log_every)  # a bar on a terminal, lines in a file, or none
    return L.Trainer(
        max_steps=settings.steps, val_check_interval=settings.val_every, check_val_every_n_epoch=None,
        gradient_clip_val=settings.clip, accelerator=settings.accelerator, devices=settings.devices,
        num_nodes=settings.num_nodes, strategy=strategy or settings.strategy, precision=settings.precision,
        logger=[TensorBoardLogger(out, name="tensorboard", version=""), table],
        log_every_n_steps=settings.log_every, enable_progress_bar=any(isinstance(c, ProgressBar) for c in shown),
        enable_model_summary=False,
        num_sanity_val_steps=0, deterministic="warn", enable_checkpointing=False, use_distributed_sampler=False,
        callbacks=[state, LearningRateMonitor("step"), *shown],
        plugins=[AtomicCheckpointIO()],
    )


def _summary(model: str, dataset: DetectionData, settings: TrainSettings, trainer: Any, state: RunState,
             module: DetectionModule, final: dict[str, float], criterion: Any) -> RunSummary:
    """The run's summary: the final evaluation (``final_*`` metrics) and the best validation loss on the way."""
    detector = module.model
    last = float(final[f"{FINAL}val_loss"])
    val = [r["val_loss"] for r in state.table.state() if "val_loss" in r]
    unmeasured = unmeasured_classes(dataset)  # no validation boxes: no AP (torchmetrics says -1)
    return RunSummary(
        model=model, data=dataset.source, steps=int(trainer.global_step), seconds=round(state.seconds, 2),
        segments=state.segments, final_val_loss=last, best_val_loss=min(val + [last]),
        map=float(final[f"{FINAL}map"]), map_50=float(final[f"{FINAL}map_50"]), map_75=float(final[f"{FINAL}map_75"]),
        map_per_class={dataset.names[c]: v for c, v in module.last_per_class.items()
                       if 0 <= c < len(dataset.names) and dataset.names[c] not in unmeasured},
        unmeasured_classes=unmeasured,
        parameters=count_parameters(detector),
        trainable_parameters=sum(p.numel() for p in detector.parameters() if p.requires_grad),
        seed=settings.seed, settings=settings,
        teacher=teacher_summary(criterion, int(trainer.global_step)) if criterion is not None else None,
    )


def evaluate(model: str | os.PathLike, data: DetectionData, *, batch_size: int = 8) -> dict[str, float]:
    """Validation loss and COCO mAP of a saved detector on ``data``'s validation split, as is."""
    import lightning as L

    config, processor, detector = load_for_inference(model)
    names = class_names(config)
    if names != data.names:
        raise InterpruneError(f"{model} detects {names}, the dataset has {data.names}; evaluate on its own classes")
    module = DetectionModule(detector, processor)
    _, loader = make_loaders(data, processor, val_batch_size=batch_size, augment=False)
    _quiet()
    trainer = L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False, accelerator="auto",
                        devices=1)
    result = trainer.test(module, loader, verbose=False)[0]  # the module's final evaluation, with mAP
    return {key: float(result[FINAL + key]) for key in ("val_loss", "map", "map_50", "map_75")}
