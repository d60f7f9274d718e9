"""Batches for Hugging Face detection models: ``pixel_values``, ``pixel_mask`` and ``labels``.

Images are decoded and augmented as uint8 tensors (fast, box-aware), and the model's own image
processor turns a whole batch at once into what the model expects (resize, normalise, pad, boxes as
normalised cx, cy, w, h), so preprocessing is the processor's, not a copy of it.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision import tv_tensors

from .augment import augmentation
from .coco import CocoSplit, DetectionData, read_image

__all__ = ["DetectionDataset", "Collator", "make_loaders", "load_image", "StepSampler"]


def load_image(path) -> torch.Tensor:
    """uint8 CHW RGB, decoded by PIL (every format the up-front check accepts) and turned upright by its
    EXIF orientation, as annotation tools show it."""
    return torch.from_numpy(np.array(read_image(path))).permute(2, 0, 1).contiguous()


def _rank_and_world() -> tuple[int, int]:
    """Asked when iterating, not when building the loader: DDP processes start after loaders are made."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class StepSampler(Sampler):
    """The whole run's training order as a pure function of (seed, step): step ``k`` of process ``r`` of
    ``W`` takes draws ``(k*W + r)*B ... +B`` of an endless stream of seeded permutations of the dataset.

    Each item is ``(index, augmentation seed)``, so what a step sees depends on nothing but its number:
    a run resumed at step ``start`` (set from the checkpoint) sees exactly the batches an uninterrupted one
    would, whatever the worker count. ``len`` is the whole run, so Lightning's epoch is the run.
    """

    def __init__(self, size: int, batch_size: int, steps: int, seed: int = 0) -> None:
        self.size, self.batch_size, self.steps, self.seed = size, batch_size, steps, seed
        self.start = 0  # the first step to draw; set on resume

    def __len__(self) -> int:
        return self.steps * self.batch_size

    def _order(self, cycle: int) -> list[int]:
        return torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed * 1_000_003 + cycle)).tolist()

    def __iter__(self) -> Iterator[tuple[int, int]]:
        rank, world = _rank_and_world()
        cycle, order = -1, []
        for step in range(self.start, self.steps):
            first = (step * world + rank) * self.batch_size
            for draw in range(first, first + self.batch_size):
                if draw // self.size != cycle:
                    cycle, order = draw // self.size, self._order(draw // self.size)
                yield order[draw % self.size], (self.seed * 1_000_003 + draw) % 2**63


class DetectionDataset(Dataset):
    """One split as (uint8 image, COCO annotation dict); ``copies`` > 1 repeats each image, as
    Roboflow's "N augmented copies per training image" does, with fresh augmentation every time."""

    def __init__(self, split: CocoSplit, transform: Callable | None = None, copies: int = 1) -> None:
        self.split, self.transform, self.copies = split, transform, max(1, copies)

    def __len__(self) -> int:
        return len(self.split) * self.copies

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, dict[str, Any]]:
        """``key`` is an index, or ``(index, seed)`` to draw the augmentation from its own seeded generator
        (``StepSampler``): then it neither depends on nor disturbs any other random state."""
        index, seed = key if isinstance(key, tuple) else (key, None)
        info = self.split.images[index % len(self.split)]
        image = tv_tensors.Image(load_image(info["file"]))
        found = self.split.boxes.get(info["id"], [])
        boxes = tv_tensors.BoundingBoxes(torch.tensor([b for _, b in found], dtype=torch.float32).reshape(-1, 4),
                                         format="XYWH", canvas_size=tuple(image.shape[-2:]))
        target = {"boxes": boxes, "labels": torch.tensor([label for label, _ in found], dtype=torch.long)}
        if self.transform is not None and seed is not None:
            with torch.random.fork_rng(devices=[]):  # v2 transforms draw from torch's global generator
                torch.manual_seed(seed)
                image, target = self.transform(image, target)
        elif self.transform is not None:
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
    steps: int | None = None,
) -> tuple[DataLoader, DataLoader]:
    """Training loader (seeded order and augmentation) and validation loader (as is).

    With ``steps`` the training loader is one pass of a :class:`StepSampler` over the whole run (what
    ``train`` uses, for exact resume); without, it is an ordinary shuffled epoch.
    """
    collate = Collator(processor)
    train = DetectionDataset(data.train, augmentation() if augment else None, copies)
    valid = DetectionDataset(data.valid)
    extra = {"num_workers": workers, "persistent_workers": workers > 0}
    # Own generators: building an iterator then draws its worker seed from them, not from the global one.
    order = ({"sampler": StepSampler(len(train), batch_size, steps, seed)} if steps else {"shuffle": True})
    return (
        DataLoader(train, batch_size=batch_size, collate_fn=collate, drop_last=False,
                   generator=torch.Generator().manual_seed(seed), **order, **extra),
        # Every process validates every image: torchmetrics' mAP gathers one state per update call, so
        # shards of unequal length would desynchronise it; whole copies give the single-process mAP.
        DataLoader(valid, batch_size=val_batch_size, shuffle=False, collate_fn=collate,
                   generator=torch.Generator().manual_seed(seed), **extra),
    )
