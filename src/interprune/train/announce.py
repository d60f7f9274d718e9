"""What a run says before it trains: the data it read, the classes, whether the head was re-created, the steps.

A pure function from data to lines, so every caller of ``train`` (the CLI, sweeps, the demo) prints the same
words and tests read them. The warning about object queries is ``train.queries``'.
"""

from __future__ import annotations

from typing import Any

from ..data.coco import DetectionData
from .settings import TrainSettings

__all__ = ["start_lines", "unmeasured_classes"]


def start_lines(data: DetectionData, config: Any, model: str, settings: TrainSettings, *, recreated: bool,
                resuming: bool, device: str) -> list[str]:
    """The start summary: data, classes, head, steps (the warning about queries is separate)."""
    lines = [f"data: {data.source}: {len(data.train)} training images ({data.train.num_boxes():,} boxes), "
             f"{len(data.valid)} validation ({data.valid.num_boxes():,} boxes)"]
    lines += [f"data: {note}" for note in data.notes]
    classes = ", ".join(data.names)
    lines.append(f"classes: {len(data.names)} ({classes if len(classes) <= 200 else classes[:197] + '...'})")
    unmeasured = unmeasured_classes(data)
    if unmeasured:
        lines.append(f"data: {len(unmeasured)} classes have no validation boxes, so their AP cannot be measured "
                     f"(the summary lists them as unmeasured_classes): {', '.join(unmeasured)}")
    if recreated:
        lines.append(f"model: {model}: classification head re-created for the dataset's classes "
                     f"({config.num_labels} -> {len(data.names)} classes); every other weight kept")
    else:
        lines.append(f"model: {model}: its classes are the dataset's; all weights kept")
    every = f", validation every {settings.val_every}" if settings.val_every < settings.steps else ""
    lines.append(f"{'resuming' if resuming else 'training'} {settings.steps} steps at batch {settings.batch_size}"
                 f"{every} on {device}")
    return lines


def unmeasured_classes(data: DetectionData) -> list[str]:
    """Classes without a box in the validation split: COCO AP is undefined for them."""
    seen = {label for boxes in data.valid.boxes.values() for label, _ in boxes}
    return [name for label, name in enumerate(data.names) if label not in seen]
