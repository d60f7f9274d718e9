"""Unlabelled images (a folder, searched recursively) as batches for the distillation term.

A teacher supplies the targets, so these images need no annotations; they go through the same
augmentation and the model's own image processor as the labelled ones, and carry no ``labels``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset
from torchvision import tv_tensors

from ..errors import InterpruneError
from .augment import augmentation
from .loader import load_image

__all__ = ["ImageFolder", "image_loader", "image_files", "IMAGE_SUFFIXES"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def image_files(folder: str | Path, *, recursive: bool = True) -> list[Path]:
    """The images in ``folder`` (and its sub-folders), by suffix, in a stable order."""
    found = Path(folder).rglob("*") if recursive else Path(folder).iterdir()
    return sorted(p for p in found if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


class ImageFolder(Dataset):
    def __init__(self, folder: str | Path, augment: bool = True) -> None:
        folder = Path(folder)
        if not folder.is_dir():
            raise InterpruneError(f"--distill-data {folder}: not a folder; give a folder of images")
        self.files = image_files(folder)
        if not self.files:
            raise InterpruneError(f"--distill-data {folder}: no images ({', '.join(IMAGE_SUFFIXES)}) in it")
        self.transform = augmentation() if augment else None

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> torch.Tensor:
        image = tv_tensors.Image(load_image(self.files[index]))
        if self.transform is not None:  # the box-aware pipeline, given no boxes
            boxes = tv_tensors.BoundingBoxes(torch.zeros(0, 4), format="XYWH", canvas_size=tuple(image.shape[-2:]))
            image, _ = self.transform(image, {"boxes": boxes, "labels": torch.zeros(0, dtype=torch.long)})
        return image.as_subclass(torch.Tensor)


class ImageCollator:
    """The model's image processor on a batch of images: ``pixel_values`` and ``pixel_mask``, no labels."""

    def __init__(self, processor: Any) -> None:
        self.processor = processor

    def __call__(self, images: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        enc = self.processor(images=list(images), return_tensors="pt")
        return {"pixel_values": enc["pixel_values"], "pixel_mask": enc["pixel_mask"]}


def image_loader(folder: str | Path, processor: Any, *, batch_size: int = 4, augment: bool = True,
                 workers: int = 0, seed: int = 0) -> DataLoader:
    return DataLoader(ImageFolder(folder, augment), batch_size=batch_size, shuffle=True,
                      collate_fn=ImageCollator(processor), generator=torch.Generator().manual_seed(seed + 1),
                      num_workers=workers, persistent_workers=workers > 0)
