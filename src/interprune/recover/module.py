"""The recovery LightningModule: a student learning from a frozen teacher on unlabelled batches.

The teacher is ``train.criterion.Teacher``, a plain object, not a child module, so Lightning never trains, moves
into a checkpoint or optimises it. The loss is ``loss.py``'s; which states
are compared is decided once, on the first batch, from their shapes and the student's dimension plan.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import lightning as L
import torch
from torch import Tensor

from ..train.criterion import Teacher
from ..train.schedule import lr_factor
from .data import model_inputs
from .loss import layer_pairs, logits_kl, state_error

__all__ = ["RecoverModule", "Matching", "STATES"]

STATES = ("hidden_states", "encoder_hidden_states", "decoder_hidden_states")  # block outputs, per stack


@dataclass
class Matching:
    """What the student's outputs are compared with: ``kind`` of output (``logits``, ``hidden`` or
    ``detection``), the teacher's residual channels the student kept (None: the same width), and per stack of
    block outputs the teacher layers its blocks came from (None: the same relative depth). ``states`` is False
    when block outputs cannot be compared at all: a student whose residual stream was turned
    (``--rotate residual``) carries mixtures of the teacher's channels, whatever the widths."""

    kind: str
    kept: Tensor | None = None
    layers: dict[str, list[int] | None] = field(default_factory=dict)
    num_labels: int = 0
    states: bool = True


class RecoverModule(L.LightningModule):
    def __init__(self, student: Any, teacher: Any, matching: Matching, settings: Any) -> None:
        super().__init__()
        self.model, self.teacher, self.matching, self.settings = student, Teacher(teacher), matching, settings
        self.pairs: dict[str, list[tuple[int, int, bool]]] | None = None  # decided on the first batch
        self.started = time.time()
        self.detr = None
        if matching.kind == "detection":
            from ..train.criterion import DistillCriterion, DistillWeights

            self.detr = [DistillCriterion(self.teacher, matching.num_labels,
                                          DistillWeights(temperature=settings.temperature), matching="auto")]

    def _pairs(self, student: Any, teacher: Any) -> dict[str, list[tuple[int, int, bool]]]:
        """(student state, teacher state, index by kept channels) per stack whose shapes can be compared."""
        found: dict[str, list[tuple[int, int, bool]]] = {}
        for attr in STATES if self.matching.states else ():
            s, t = getattr(student, attr, None), getattr(teacher, attr, None)
            if not isinstance(s, (tuple, list)) or not isinstance(t, (tuple, list)) or not s or not t:
                continue
            usable = []
            for i, j in layer_pairs(len(s), len(t), self.matching.layers.get(attr)):
                a, b = s[i], t[j]
                if a.dim() != 3 or a.shape[:-1] != b.shape[:-1]:
                    continue  # conv maps (per-stage widths) and other positions: not one residual stream
                kept = self.matching.kept
                if kept is not None and a.shape[-1] == len(kept) and b.shape[-1] > int(kept.max()):
                    usable.append((i, j, True))
                elif a.shape[-1] == b.shape[-1]:
                    usable.append((i, j, False))
            if usable:
                found[attr] = usable
        return found

    def terms(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        inputs = model_inputs(self.model, batch)
        student = self.model(**inputs, output_hidden_states=True)
        teacher = self.teacher.run(**inputs, output_hidden_states=True)
        mask = inputs.get("attention_mask")
        kept = self.matching.kept
        out: dict[str, Tensor] = {}
        if self.detr is not None:
            d = self.detr[0].distill_terms(student, teacher)
            out["output"] = d["distill_class"] + 5 * d["distill_l1"] + 2 * d["distill_giou"]
        elif self.matching.kind == "logits":
            out["output"] = logits_kl(student.logits, teacher.logits, self.settings.temperature,
                                      mask if student.logits.dim() == 3 else None)
        else:
            s, t = student.last_hidden_state, teacher.last_hidden_state
            out["output"] = state_error(s, t, kept if s.shape[-1] != t.shape[-1] else None, mask)
        if self.pairs is None:
            self.pairs = self._pairs(student, teacher)
        errors = [state_error(getattr(student, attr)[i], getattr(teacher, attr)[j], kept if index else None, mask)
                  for attr, pairs in self.pairs.items() for i, j, index in pairs]
        if errors:
            out["hidden"] = torch.stack(errors).mean()
        w = self.settings
        out["loss"] = w.output_weight * out["output"] + (w.hidden_weight * out["hidden"] if errors else 0.0)
        return out

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        """Lightning puts the module in training mode each epoch; a short recovery learns the function the
        model computes in use (no dropout, the source's batch-norm statistics) unless asked otherwise."""
        if not self.settings.train_mode:
            self.model.eval()

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        terms = self.terms(batch)
        loss = terms.pop("loss")
        if not torch.isfinite(loss):
            from ..train.module import NonFiniteLoss

            raise NonFiniteLoss(self.global_step, float(loss))
        size = next(iter(batch.values())).shape[0]
        self.log("train_loss", loss, prog_bar=True, batch_size=size)
        self.log_dict({f"train_{k}": v for k, v in terms.items()}, batch_size=size)
        self.log("wall_time", time.time() - self.started, batch_size=size)
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        terms = self.terms(batch)
        size = next(iter(batch.values())).shape[0]
        self.log("val_loss", terms.pop("loss"), prog_bar=True, batch_size=size, sync_dist=True)
        self.log_dict({f"val_{k}": v for k, v in terms.items()}, batch_size=size, sync_dist=True)

    def on_validation_epoch_end(self) -> None:
        self.log("step", float(self.global_step))  # validation rows at the number of steps done

    @property
    def lr(self) -> float:
        """``--lr``, or by default one that shrinks with the student's width (``settings.auto_lr``)."""
        from ..hf.config import hidden_size
        from ..hf.models import is_detector
        from .settings import auto_lr

        config = self.model.config
        return self.settings.lr or auto_lr(hidden_size(getattr(config, "text_config", None) or config),
                                           is_detector(config))

    def configure_optimizers(self) -> Any:
        s = self.settings
        params = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=self.lr, weight_decay=s.weight_decay)
        total = self.trainer.max_steps if self._trainer is not None and self.trainer.max_steps > 0 else 1
        warmup = s.warmup_steps if s.warmup_steps is not None else total // 10
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(
            step, total, warmup=warmup, decay=s.lr_decay))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
