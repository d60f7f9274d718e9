"""``interprune predict``: draw a detector's findings on images, so a person can judge it by eye.

Each object query is one candidate object, so each query is drawn at most once, with its best class. (The
post-processing of sigmoid-scored models such as Conditional DETR instead keeps the top 100 (query, class)
pairs: early in training every class of every query scores about 0.3, and the picture shows 100 boxes on 20
positions with up to 13 captions stacked on each.) The number drawn per image is capped (``top``) and the
result says how many each image had and whether the cap cut them. Pictures are JPEG, or PNG, at most
``max_side`` pixels on their longest side: a full-size PNG of a 2048 px photo is 2 MB and slow to encode.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torchvision.transforms.v2 import functional as TF

from .atomic import write_bytes
from .data.coco import check_image
from .data.images import image_files
from .data.loader import load_image
from .data.show import draw_boxes
from .errors import InterpruneError
from .hf.models import load_for_inference
from .train.criterion import uses_no_object_class

__all__ = ["predict", "describe", "detect", "detect_and_draw", "best_per_query", "Detections", "Found", "FORMATS"]

FORMATS = {"jpg": "JPEG", "png": "PNG"}


@dataclass(frozen=True)
class Detections:
    """One image's detections, best first: ``boxes`` as x0, y0, x1, y1 pixels; ``found`` how many cleared
    the threshold before the cap kept the first ``len(labels)``."""

    scores: torch.Tensor
    labels: torch.Tensor
    boxes: torch.Tensor
    found: int


@dataclass(frozen=True)
class Found:
    """What ``predict`` wrote for one image."""

    image: str
    detections: int  # drawn
    found: int  # above the threshold, before the cap

    @property
    def capped(self) -> bool:
        return self.found > self.detections


def best_per_query(logits: torch.Tensor, boxes: torch.Tensor, size: tuple[int, int],
                   num_labels: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per query of one image: the best class's score and label, and the box in pixels of an image of
    ``size`` (height, width). ``logits`` (queries, classes), ``boxes`` (queries, 4) normalised cx, cy, w, h as
    every HF DETR-family model predicts them. A softmax over ``num_labels + 1`` classes whose last is "no object"
    (DETR), or independent sigmoids over ``num_labels`` (Conditional, Deformable DETR)."""
    if uses_no_object_class(logits, num_labels):
        probs = logits.softmax(-1)[..., :-1]
    else:
        probs = logits.sigmoid()
    scores, labels = probs.max(-1)
    height, width = size
    cx, cy, w, h = boxes.unbind(-1)
    xyxy = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1)
    return scores, labels, xyxy * torch.tensor([width, height, width, height], dtype=xyxy.dtype)



@torch.no_grad()
def detect(processor: Any, detector: Any, image: torch.Tensor, threshold: float = 0.5,
           top: int | None = 100) -> Detections:
    """The detections of ``image`` (uint8, C x H x W) scoring at least ``threshold``, one per query, the
    ``top`` best of them (``None``: all)."""
    inputs = processor(images=image, return_tensors="pt")
    outputs = detector(pixel_values=inputs["pixel_values"], pixel_mask=inputs.get("pixel_mask"))
    scores, labels, boxes = best_per_query(outputs.logits[0].float(), outputs.pred_boxes[0].float(),
                                           tuple(image.shape[-2:]), detector.config.num_labels)
    order = scores.argsort(descending=True)
    order = order[scores[order] >= threshold]
    found = len(order)
    order = order[:top] if top is not None else order
    return Detections(scores[order], labels[order], boxes[order], found)


def detect_and_draw(processor: Any, detector: Any, image: torch.Tensor, names: list[str],
                    threshold: float = 0.5, top: int | None = None) -> tuple[torch.Tensor, int]:
    """``image`` with its detections drawn (one per query, its best class) and their count; with ``top``, the
    ``top`` most confident whatever their scores (a model early in training may rank the right boxes first
    while none of them clears a fixed threshold)."""
    found = detect(processor, detector, image, 0.0 if top else threshold, top)
    return draw_boxes(image, found.boxes, found.labels.tolist(), names, found.scores.tolist()), len(found.labels)


def encode(image: torch.Tensor, kind: str = "jpg") -> bytes:
    """``image`` (uint8, C x H x W) as JPEG (quality 90) or PNG bytes."""
    buffer = io.BytesIO()
    extra = {"quality": 90} if kind == "jpg" else {"compress_level": 6}
    Image.fromarray(image.permute(1, 2, 0).contiguous().numpy()).save(buffer, format=FORMATS[kind], **extra)
    return buffer.getvalue()


def bounded(image: torch.Tensor, max_side: int | None) -> tuple[torch.Tensor, float]:
    """``image`` scaled down so its longest side is at most ``max_side`` (never up), and the scale used."""
    height, width = image.shape[-2:]
    if not max_side or max(height, width) <= max_side:
        return image, 1.0
    scale = max_side / max(height, width)
    size = [max(1, round(height * scale)), max(1, round(width * scale))]
    return TF.resize(image, size, antialias=True), scale


def predict(model: str | os.PathLike, images: str | os.PathLike, out: str | os.PathLike,
            threshold: float = 0.5, limit: int | None = None, *, top: int | None = 100, kind: str = "jpg",
            max_side: int | None = 1280) -> list[Found]:
    """Run ``model`` on every image in ``images`` and write ``out/<name>.jpg`` (or ``.png``) with its
    detections: one per query, at least ``threshold``, the ``top`` best, at most ``max_side`` pixels."""
    if kind not in FORMATS:
        raise InterpruneError(f"--format {kind}: choose one of {', '.join(FORMATS)}")
    if (top is not None and top < 1) or (max_side and max_side < 16):
        raise InterpruneError("--top must be at least 1 and --max-side at least 16 (0 for full size)")
    files = image_files(images, recursive=False) if Path(images).is_dir() else []
    if not files:
        raise InterpruneError(f"{images}: no images (.jpg, .png, ...) found; point --images at a folder of images")
    files = files[:limit]
    for file in files:  # every image decodes before any output is written
        check_image(file, "--images")
    config, processor, detector = load_for_inference(model)
    names = [config.id2label.get(i, str(i)) for i in range(config.num_labels)]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for file in files:
        image = load_image(file)
        found = detect(processor, detector, image, threshold, top)
        small, scale = bounded(image, max_side)  # drawn at the written size: captions sized for it
        drawn = draw_boxes(small, found.boxes * scale, found.labels.tolist(), names, found.scores.tolist())
        write_bytes(out / f"{file.stem}.{kind}", encode(drawn, kind))  # whole pictures only, even when killed
        written.append(Found(file.name, len(found.labels), found.found))
    return written


def describe(found: list[Found], threshold: float, top: int | None) -> str:
    """One line: detections, images, the most on one image, and whether the cap (``top``) cut any."""
    drawn = sum(f.detections for f in found)
    most = max((f.found for f in found), default=0)
    line = (f"{drawn} detections on {len(found)} images at score {threshold} or more, one per object query "
            f"(at most {most} on one image)")
    capped = [f for f in found if f.capped]
    if capped:
        line += (f"; --top {top} cut {len(capped)} images ({sum(f.found - f.detections for f in capped)} "
                 f"detections not drawn)")
    return line
