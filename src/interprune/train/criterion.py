"""Losses as objects handed to the Lightning module, as DETR keeps its ``SetCriterion`` apart from the model.

``TaskCriterion`` is the model's own loss (a Hugging Face detector computes DETR's Hungarian-matched loss
itself when given ``labels``). ``DistillCriterion`` composes with it: the task loss plus what a frozen
teacher says about the same images (and about unlabelled ones, which have no task term):

* class distributions per query, KL divergence at temperature ``T`` (scaled by ``T**2`` as in Hinton et al.);
* boxes per query, L1 + GIoU, weighted by how sure the teacher is that the query holds an object (a
  teacher's "no object" queries put their boxes anywhere; copying those would be noise);
* optionally features: the encoder memory and the decoder states (MSE), the student's channels compared
  with the teacher's kept channels when the dimension plan says which those are, else through a learned
  linear projection.

A student shrunk from its teacher keeps the same object queries, so query ``i`` of one is query ``i`` of
the other and no matching is needed. Otherwise (another query count, an unrelated teacher) the student's
predictions are matched one to one to the teacher's with the Hungarian algorithm first.

The teacher is a plain attribute, not a registered child module: Lightning never moves it, never puts it
in training mode, never gives its parameters to the optimiser and never writes it into a checkpoint.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn
from torchvision.ops import box_convert, generalized_box_iou, generalized_box_iou_loss

from ..errors import InterpruneError

__all__ = ["TaskCriterion", "DistillCriterion", "DistillWeights", "Teacher", "class_kl", "box_terms",
           "foreground", "match_queries", "uses_no_object_class"]


def uses_no_object_class(logits: Tensor, num_labels: int) -> bool:
    """DETR scores ``num_labels + 1`` classes with a softmax (the last is "no object"); Conditional and
    Deformable DETR score ``num_labels`` classes with independent sigmoids. The logits' width says which."""
    return logits.shape[-1] == num_labels + 1


def class_kl(student: Tensor, teacher: Tensor, temperature: float, softmax: bool) -> Tensor:
    """Mean over queries of KL(teacher || student) at ``temperature``, times ``temperature**2``.

    ``student``/``teacher``: logits ``(..., classes)``. With ``softmax`` one distribution per query; without,
    one Bernoulli per class (sigmoid models), summed over classes. Zero exactly when the logits agree."""
    s, t = student / temperature, teacher / temperature
    if softmax:
        kl = F.kl_div(F.log_softmax(s, -1), F.log_softmax(t, -1), log_target=True, reduction="none").sum(-1)
    else:
        p = torch.sigmoid(t)
        kl = (F.binary_cross_entropy_with_logits(s, p, reduction="none")
              - F.binary_cross_entropy_with_logits(t, p, reduction="none")).sum(-1)
    return kl.mean() * temperature**2


def foreground(teacher_logits: Tensor, softmax: bool) -> Tensor:
    """How sure the teacher is that each query holds an object: 1 - p(no object), or the top class's sigmoid."""
    if softmax:
        return 1.0 - teacher_logits.softmax(-1)[..., -1]
    return teacher_logits.sigmoid().amax(-1)


def box_terms(student: Tensor, teacher: Tensor, weight: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """L1 (summed over cx, cy, w, h) and 1 - GIoU between corresponding boxes ``(..., 4)``, weighted means
    over boxes (``weight`` per box, default equal)."""
    s, t = student.reshape(-1, 4), teacher.reshape(-1, 4)
    w = torch.ones(len(s), device=s.device, dtype=s.dtype) if weight is None else weight.reshape(-1).to(s.dtype)
    total = w.sum().clamp_min(1e-6)
    l1 = (s - t).abs().sum(-1)
    giou = generalized_box_iou_loss(box_convert(s, "cxcywh", "xyxy"), box_convert(t, "cxcywh", "xyxy"))
    return (l1 * w).sum() / total, (giou * w).sum() / total


@torch.no_grad()
def match_queries(student_logits: Tensor, student_boxes: Tensor, teacher_logits: Tensor, teacher_boxes: Tensor,
                  softmax: bool, costs: tuple[float, float, float] = (1.0, 5.0, 2.0)) -> list[tuple[Tensor, Tensor]]:
    """Per image, (student indices, teacher indices) of a one-to-one Hungarian matching of predictions.

    The cost is DETR's matcher cost (class 1, L1 5, GIoU 2 by default) with the teacher's class
    distribution in place of a label: minus the probability mass both put on the same classes."""
    ps = student_logits.softmax(-1) if softmax else student_logits.sigmoid()
    pt = teacher_logits.softmax(-1) if softmax else teacher_logits.sigmoid()
    if softmax:  # agreeing on "no object" is no reason to pair two queries
        ps, pt = ps[..., :-1], pt[..., :-1]
    out = []
    for b in range(student_logits.shape[0]):
        cost = (-costs[0] * ps[b] @ pt[b].T + costs[1] * torch.cdist(student_boxes[b], teacher_boxes[b], p=1)
                - costs[2] * generalized_box_iou(box_convert(student_boxes[b], "cxcywh", "xyxy"),
                                                 box_convert(teacher_boxes[b], "cxcywh", "xyxy")))
        cost = torch.nan_to_num(cost.float(), nan=1e6, posinf=1e6, neginf=-1e6).cpu()
        i, j = linear_sum_assignment(cost.numpy())
        out.append((torch.as_tensor(i, dtype=torch.long), torch.as_tensor(j, dtype=torch.long)))
    return out


class Teacher:
    """A frozen model in eval mode that runs without gradients and counts the time it takes.

    Deliberately not an ``nn.Module``: held by a criterion as a plain attribute, it stays out of the
    student's state dict, checkpoints, optimiser and ``train()``/``to()`` calls."""

    def __init__(self, model: nn.Module, name: str = "teacher") -> None:
        self.model, self.name = model.eval().requires_grad_(False), name
        self.seconds, self.calls = 0.0, 0

    def __call__(self, pixel_values: Tensor, pixel_mask: Tensor | None) -> Any:
        return self.run(pixel_values=pixel_values, pixel_mask=pixel_mask)

    def run(self, **inputs: Any) -> Any:
        """The model on ``inputs`` (any keywords; moved to their device on first use), timed."""
        device = next(v for v in inputs.values() if isinstance(v, Tensor)).device
        if next(self.model.parameters()).device != device:
            self.model.to(device)
        sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        sync()
        started = time.perf_counter()
        with torch.no_grad():
            outputs = self.model(**inputs)
        sync()  # GPU work is asynchronous: without this the timer sees only the launch
        self.seconds += time.perf_counter() - started
        self.calls += 1
        return outputs


class TaskCriterion(nn.Module):
    """The model's own loss: a Hugging Face detector computes it when it is given ``labels``. A batch
    without labels (unlabelled images for distillation) has no task term."""

    def forward(self, outputs: Any, batch: dict) -> tuple[Tensor, dict[str, Tensor]]:
        if getattr(outputs, "loss", None) is None:
            return outputs.logits.new_zeros(()), {}
        return outputs.loss, dict(outputs.loss_dict)


@dataclass
class DistillWeights:
    """Weights of the distillation terms; DETR weighs its own class, L1 and GIoU terms 1, 5 and 2."""

    classes: float = 1.0
    boxes: float = 5.0
    giou: float = 2.0
    features: float = 0.0  # 0: no feature term
    temperature: float = 2.0


class DistillCriterion(nn.Module):
    """The task loss plus distillation from ``teacher``; in evaluation the task loss alone, so validation
    losses of distilled and undistilled runs stay comparable."""

    def __init__(self, teacher: Teacher, num_labels: int, weights: DistillWeights | None = None, *,
                 task: nn.Module | None = None, matching: str = "auto", widths: tuple[int, int] | None = None,
                 kept_channels: Tensor | None = None) -> None:
        """``widths``: (student, teacher) hidden sizes, needed for the feature term; ``kept_channels``: the
        teacher channels the student's residual channels were taken from (from the dimension plan), used
        instead of a learned projection when given."""
        super().__init__()
        self.teacher = teacher  # a plain object: see Teacher
        self.num_labels, self.weights = num_labels, weights or DistillWeights()
        self.task = task if task is not None else TaskCriterion()
        if matching not in ("auto", "none", "hungarian"):
            raise ValueError(f"matching must be auto, none or hungarian, not {matching!r}")
        self.matching = matching
        self.projections = nn.ModuleDict()
        if kept_channels is not None:
            self.register_buffer("kept_channels", torch.as_tensor(kept_channels, dtype=torch.long), persistent=False)
        else:
            self.kept_channels = None
            if self.weights.features > 0 and widths is not None and widths[0] != widths[1]:
                self.projections.update({k: nn.Linear(widths[0], widths[1]) for k in ("encoder", "decoder")})

    def forward(self, outputs: Any, batch: dict) -> tuple[Tensor, dict[str, Tensor]]:
        loss, terms = self.task(outputs, batch)
        if not self.training:
            return loss, terms
        teacher = self.teacher(batch["pixel_values"], batch.get("pixel_mask"))
        distill = self.distill_terms(outputs, teacher)
        w = self.weights
        total = (w.classes * distill["distill_class"] + w.boxes * distill["distill_l1"]
                 + w.giou * distill["distill_giou"] + w.features * distill.get("distill_features", 0.0))
        task = {"task_loss": loss.detach()} if "labels" in batch else {}  # unlabelled images have no task term
        return loss + total, {**terms, **task, **distill}

    def distill_terms(self, student: Any, teacher: Any) -> dict[str, Tensor]:
        s_logits, t_logits = student.logits, teacher.logits.to(student.logits.dtype)
        s_boxes, t_boxes = student.pred_boxes, teacher.pred_boxes.to(student.pred_boxes.dtype)
        if s_logits.shape[-1] != t_logits.shape[-1]:
            raise InterpruneError(f"the teacher scores {t_logits.shape[-1]} classes, the student "
                                  f"{s_logits.shape[-1]}; distil from a teacher fine-tuned on the same classes")
        softmax = uses_no_object_class(s_logits, self.num_labels)
        match = self.matching == "hungarian" or (self.matching == "auto" and s_logits.shape[1] != t_logits.shape[1])
        pick_s = pick_t = lambda x: x  # noqa: E731  (same queries: query i is query i)
        if match:
            pairs = match_queries(s_logits, s_boxes, t_logits, t_boxes, softmax)
            batch_ = torch.cat([torch.full_like(i, b) for b, (i, _) in enumerate(pairs)]).to(s_logits.device)
            rows_s = torch.cat([i for i, _ in pairs]).to(s_logits.device)
            rows_t = torch.cat([j for _, j in pairs]).to(s_logits.device)
            pick_s, pick_t = (lambda x: x[batch_, rows_s]), (lambda x: x[batch_, rows_t])  # noqa: E731
        s_logits, t_logits, s_boxes, t_boxes = pick_s(s_logits), pick_t(t_logits), pick_s(s_boxes), pick_t(t_boxes)
        l1, giou = box_terms(s_boxes, t_boxes, foreground(t_logits, softmax))
        terms = {"distill_class": class_kl(s_logits, t_logits, self.weights.temperature, softmax),
                 "distill_l1": l1, "distill_giou": giou}
        if self.weights.features > 0:
            decoder = self._feature("decoder", pick_s(student.last_hidden_state), pick_t(teacher.last_hidden_state))
            encoder = self._feature("encoder", student.encoder_last_hidden_state, teacher.encoder_last_hidden_state)
            terms["distill_features"] = encoder + decoder
        return terms

    def _feature(self, key: str, student: Tensor, teacher: Tensor) -> Tensor:
        if student.shape[:-1] != teacher.shape[:-1]:
            raise InterpruneError(f"feature distillation: the student's {key} states are {tuple(student.shape)}, the "
                                  f"teacher's {tuple(teacher.shape)}; they need the same positions (same backbone and "
                                  "image size), or switch the feature term off")
        teacher = teacher.to(student.dtype)
        if self.kept_channels is not None:
            teacher = teacher[..., self.kept_channels.to(teacher.device)]
        elif key in self.projections:
            student = self.projections[key](student)
        return F.mse_loss(student, teacher)
