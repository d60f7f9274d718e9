"""The recovery loss as pure tensor functions: what the student's outputs and block states owe the teacher's.

* outputs: logits (classifiers, language models) by KL at a temperature, per token where there are tokens
  (padding left out); last hidden states (encoders) by a normalised squared error; DETR outputs by the
  per-query class KL and box terms of ``train.criterion``;
* block outputs: each student block's output against the teacher block it was taken from (the depth
  choice in ``interprune.json``), on the teacher channels the student kept (the residual choice), as a
  squared error relative to the teacher state's energy, so blocks of any scale weigh alike.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["logits_kl", "state_error", "layer_pairs"]


def _weights(mask: Tensor | None, shape: torch.Size) -> Tensor | None:
    """Per-position weights (1 for real tokens, 0 for padding) broadcastable over ``shape[:-1]``."""
    if mask is None or len(shape) < 3 or tuple(mask.shape) != tuple(shape[:2]):
        return None
    return mask.to(torch.float32)


def logits_kl(student: Tensor, teacher: Tensor, temperature: float, mask: Tensor | None = None) -> Tensor:
    """KL(teacher || student) of softmax distributions at ``temperature`` times its square (Hinton), averaged
    over examples (and real tokens). Zero exactly when the logits agree up to a constant."""
    s = F.log_softmax(student.float() / temperature, -1)
    t = F.log_softmax(teacher.float() / temperature, -1)
    kl = (t.exp() * (t - s)).sum(-1)
    w = _weights(mask, student.shape)
    mean = kl.mean() if w is None else (kl * w).sum() / w.sum().clamp_min(1)
    return mean * temperature**2


def state_error(student: Tensor, teacher: Tensor, kept: Tensor | None = None, mask: Tensor | None = None) -> Tensor:
    """``|s - t[..., kept]|^2 / |t[..., kept]|^2`` over examples (and real tokens): 0 when equal, 1 when the
    student outputs zeros."""
    teacher = teacher.float()
    if kept is not None:
        teacher = teacher.index_select(-1, kept.to(teacher.device))
    diff = (student.float() - teacher).pow(2).sum(-1)
    energy = teacher.pow(2).sum(-1)
    w = _weights(mask, student.shape)
    if w is None:
        return diff.sum() / energy.sum().clamp_min(1e-12)
    return (diff * w).sum() / (energy * w).sum().clamp_min(1e-12)


def layer_pairs(student_states: int, teacher_states: int, kept_layers: list[int] | None) -> list[tuple[int, int]]:
    """(student index, teacher index) of hidden states to match: the embeddings with the embeddings and
    block ``i`` with the teacher block it was taken from (``kept_layers``, 0-based source layers), else
    with the teacher block at the same relative depth; the last always with the last."""
    blocks_s, blocks_t = student_states - 1, teacher_states - 1
    if kept_layers is not None and len(kept_layers) == blocks_s and max(kept_layers, default=-1) < blocks_t:
        return [(0, 0)] + [(i + 1, k + 1) for i, k in enumerate(kept_layers)]
    if blocks_s <= 0:
        return [(0, 0)]
    return [(0, 0)] + [(i, round(i * blocks_t / blocks_s)) for i in range(1, blocks_s + 1)]
