"""The paper's ``Detr`` LightningModule (its Algorithm 1), for any Hugging Face detection model.

The model computes its own loss (Hungarian matching, classification, L1 and GIoU terms) when given
``labels``, so one ``common_step`` serves training, validation and the final evaluation. The final
evaluation is Lightning's test stage (``trainer.test``): it always computes mAP and logs under ``final_``
names, which the per-step metrics table leaves to the run summary. The loss itself is a criterion object
handed in (``train/criterion.py``: the task loss, or the task loss plus distillation), as DETR's engine takes
its ``SetCriterion`` beside the model. COCO mAP comes from torchmetrics.
"""

from __future__ import annotations

import time
from typing import Any

import lightning as L
import torch
from torchmetrics.detection import MeanAveragePrecision
from torchvision.ops import box_convert

from .criterion import TaskCriterion
from .schedule import lr_factor

__all__ = ["DetectionModule", "NonFiniteLoss", "FINAL"]

FINAL = "final_"  # the prefix of what the final evaluation logs


class NonFiniteLoss(RuntimeError):
    """Training stopped because the loss became NaN or infinite; ``step`` says when."""

    def __init__(self, step: int, value: float) -> None:
        super().__init__(f"loss became {value} at step {step}")
        self.step, self.value = step, value


class DetectionModule(L.LightningModule):
    def __init__(self, model: Any, processor: Any, *, lr: float = 1e-4, lr_backbone: float = 1e-5,
                 weight_decay: float = 1e-4, map_every_val: bool = False, warmup_steps: int = 0,
                 lr_decay: str = "constant", lr_end: float = 0.0, criterion: torch.nn.Module | None = None) -> None:
        super().__init__()
        self.model, self.processor = model, processor
        self.criterion = criterion if criterion is not None else TaskCriterion()
        self.lr, self.lr_backbone, self.weight_decay = lr, lr_backbone, weight_decay
        self.warmup_steps, self.lr_decay, self.lr_end = warmup_steps, lr_decay, lr_end
        self.map_every_val = map_every_val
        self.map_metric = MeanAveragePrecision(box_format="xyxy", iou_type="bbox", class_metrics=True)
        self.last_per_class: dict[int, float] = {}  # AP per class id of the last evaluation that computed mAP
        self.started = time.time()

    def forward(self, pixel_values: torch.Tensor, pixel_mask: torch.Tensor | None = None) -> Any:
        return self.model(pixel_values=pixel_values, pixel_mask=pixel_mask)

    def common_step(self, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor], Any]:
        labels = [{k: v.to(self.device) for k, v in t.items()} for t in batch["labels"]] if "labels" in batch else None
        outputs = self.model(pixel_values=batch["pixel_values"], pixel_mask=batch["pixel_mask"], labels=labels)
        loss, terms = self.criterion(outputs, batch)
        return loss, terms, outputs

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        if "unlabelled" in batch:  # a labelled batch and a batch of unlabelled images (distillation only)
            loss, terms, _ = self.common_step(batch["labelled"])
            extra, more, _ = self.common_step(batch["unlabelled"])
            loss, terms, batch = loss + extra, {**terms, **{f"unlabelled_{k}": v for k, v in more.items()}}, batch["labelled"]
        else:
            loss, terms, _ = self.common_step(batch)
        if not torch.isfinite(loss):
            raise NonFiniteLoss(self.global_step, float(loss))
        size = len(batch["labels"])
        self.log("train_loss", loss, prog_bar=True, batch_size=size)
        self.log_dict({f"train_{k}": v for k, v in terms.items()}, batch_size=size)
        self.log("wall_time", time.time() - self.started, batch_size=size)
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, "", with_map=self.map_every_val)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        """The final evaluation, on the validation split: loss, its terms and mAP, logged as ``final_*``."""
        self._evaluate(batch, FINAL, with_map=True)

    def _evaluate(self, batch: dict, prefix: str, *, with_map: bool) -> None:
        loss, terms, outputs = self.common_step(batch)
        size = len(batch["labels"])
        self.log(f"{prefix}val_loss", loss, prog_bar=True, batch_size=size, sync_dist=True)
        self.log_dict({f"{prefix}val_{k}": v for k, v in terms.items()}, batch_size=size, sync_dist=True)
        if with_map:
            self._update_map(outputs, batch["labels"])

    def _update_map(self, outputs: Any, labels: list[dict]) -> None:
        sizes = torch.stack([t["size"] for t in labels]).to(self.device)
        found = self.processor.post_process_object_detection(outputs, threshold=0.0, target_sizes=sizes)
        preds = [{"boxes": f["boxes"], "scores": f["scores"], "labels": f["labels"]} for f in found]
        truth = []
        for t in labels:
            h, w = t["size"].tolist()
            boxes = box_convert(t["boxes"].to(self.device), "cxcywh", "xyxy") * torch.tensor([w, h, w, h], device=self.device)
            truth.append({"boxes": boxes, "labels": t["class_labels"].to(self.device)})
        self.map_metric.update(preds, truth)

    def on_validation_epoch_end(self) -> None:
        # Validation rows are logged at the number of optimiser steps done (0: what the initialisation
        # inherited, before any training), not at Lightning's 0-based index of the last training batch.
        self.log("step", float(self.global_step))
        if self.map_every_val:
            self._log_map("")

    def on_test_epoch_end(self) -> None:
        self._log_map(FINAL)

    def _log_map(self, prefix: str) -> None:
        result = self.map_metric.compute()
        self.map_metric.reset()
        self.log_dict({f"{prefix}{k}": result[k] for k in ("map", "map_50", "map_75")}, sync_dist=True)
        classes = result.get("classes")
        per_class = result.get("map_per_class")
        if classes is not None and per_class is not None and per_class.dim() > 0:
            self.last_per_class = {int(c): float(v) for c, v in zip(classes.tolist(), per_class.tolist())}

    def configure_optimizers(self) -> Any:
        backbone = [p for n, p in self.model.named_parameters() if "backbone" in n and p.requires_grad]
        rest = [p for n, p in self.model.named_parameters() if "backbone" not in n and p.requires_grad]
        rest += [p for p in self.criterion.parameters() if p.requires_grad]  # e.g. a feature projection
        groups = [{"params": rest, "lr": self.lr}] + ([{"params": backbone, "lr": self.lr_backbone}] if backbone else [])
        optimizer = torch.optim.AdamW(groups, lr=self.lr, weight_decay=self.weight_decay)
        if not self.warmup_steps and self.lr_decay == "constant":
            return optimizer  # the paper's constant learning rate
        total = self.trainer.max_steps if self._trainer is not None and self.trainer.max_steps > 0 else 1
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(
            step, total, warmup=self.warmup_steps, decay=self.lr_decay, end=self.lr_end))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

