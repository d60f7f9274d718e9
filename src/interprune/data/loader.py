"""Batches for Hugging Face detection models: ``pixel_values``, ``pixel_mask`` and ``labels``.

Images are decoded and augmented as uint8 tensors (fast, box-aware), and the model's own image
processor turns a whole batch at once into what the model expects (resize, normalise, pad, boxes as
normalised cx, cy, w, h), so preprocessing is the processor's, not a copy of it.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch.utils.data import DataLoader, Dataset
from torchvision import tv_tensors
from torchvision.io import ImageReadMode, decode_image

from .augment import augmentation
from .coco import CocoSplit, DetectionData

__all__ = ["DetectionDataset", "Collator", "make_loaders", "load_image"]


def load_image(path) -> torch.Tensor:
    return decode_image(str(path), mode=ImageReadMode.RGB)


class DetectionDataset(Dataset):
    """One split as (uint8 image, COCO annotation dict); ``copies`` > 1 repeats each image, as
    Roboflow's "N augmented copies per training image" does, with fresh augmentation every time."""

    def __init__(self, split: CocoSplit, transform: Callable | None = None, copies: int = 1) -> None:
        self.split, self.transform, self.copies = split, transform, max(1, copies)

    def __len__(self) -> int:
        return len(self.split) * self.copies

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, Any]]:
        info = self.split.images[index % len(self.split)]
        image = tv_tensors.Image(load_image(info["file"]))
        found = self.split.boxes.get(info["id"], [])
        boxes = tv_tensors.BoundingBoxes(torch.tensor([b for _, b in found], dtype=torch.float32).reshape(-1, 4),
                                         format="XYWH", canvas_size=tuple(image.shape[-2:]))
        target = {"boxes": boxes, "labels": torch.tensor([label for label, _ in found], dtype=torch.long)}
        if self.transform is not None:
            image, target = self.transform(image, target)
        xywh = target["boxes"].tolist()
        annotations = [{"bbox": b, "category_id": int(c), "area": b[2] * b[3], "iscrowd": 0}
                       for b, c in zip(xywh, target["labels"].tolist())]
        return image.as_subclass(torch.Tensor), {"image_id": info["id"], "annotations": annotations}


class Collator:
    """Calls the model's image processor once per batch (picklable, so it works in worker processes)."""

    def __init__(self, processor: Any) -> None:
        self.processor = processor

    def __call__(self, batch: list[tuple[torch.Tensor, dict]]) -> dict[str, Any]:
        images, annotations = zip(*batch)
        enc = self.processor(images=list(images), annotations=list(annotations), return_tensors="pt")
        return {"pixel_values": enc["pixel_values"], "pixel_mask": enc["pixel_mask"], "labels": enc["labels"]}


def make_loaders(
    data: DetectionData,
    processor: Any,
    *,
    batch_size: int = 4,
    val_batch_size: int = 2,
    augment: bool = True,
    copies: int = 1,
    workers: int = 0,
    seed: int = 0,
) -> tuple[DataLoader, DataLoader]:
    """Training loader (shuffled with a seeded generator, augmented) and validation loader (as is)."""
    collate = Collator(processor)
    train = DetectionDataset(data.train, augmentation() if augment else None, copies)
    valid = DetectionDataset(data.valid)
    extra = {"num_workers": workers, "persistent_workers": workers > 0}
    return (
        DataLoader(train, batch_size=batch_size, shuffle=True, collate_fn=collate, drop_last=False,
                   generator=torch.Generator().manual_seed(seed), **extra),
        DataLoader(valid, batch_size=val_batch_size, shuffle=False, collate_fn=collate, **extra),
    )
