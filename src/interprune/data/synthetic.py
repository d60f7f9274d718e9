"""What the synthetic datasets share: textured ground, the Roboflow-layout writer, augmented copies.

A generator is a function ``draw(rng, size) -> (PIL image, [(class index, [x, y, w, h]), ...])``; this
module turns it into a Roboflow COCO export on disk, deterministic for a seed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as TF

from .augment import augmentation
from .coco import ROBOFLOW_JSON
from ..atomic import atomic_folder
from ..errors import InterpruneError

Boxes = list[tuple[int, list[float]]]
Draw = Callable[[np.random.Generator, int], tuple[Image.Image, Boxes]]

__all__ = ["Boxes", "Draw", "ground", "write_dataset", "clip_box"]


def ground(rng: np.random.Generator, size: int, base: tuple[int, int, int], spread: float = 28.0) -> np.ndarray:
    """A textured ground: a base colour with smooth blotches and fine grain, as float RGB array."""
    coarse = rng.normal(0.0, 1.0, (6, 6, 3)).astype(np.float32)
    smooth = np.asarray(Image.fromarray(((coarse + 4) * 32).clip(0, 255).astype(np.uint8)).resize(
        (size, size), Image.BICUBIC), dtype=np.float32) / 32 - 4
    grain = rng.normal(0.0, 0.35, (size, size, 1)).astype(np.float32)
    return np.asarray(base, np.float32) + spread * (0.6 * smooth.mean(-1, keepdims=True) + 0.4 * smooth) + spread * grain


def clip_box(x0: float, y0: float, x1: float, y1: float, size: int) -> list[float] | None:
    """The visible part of a box as [x, y, w, h], or None when too little of it is in the image."""
    cx0, cy0, cx1, cy1 = max(x0, 0.0), max(y0, 0.0), min(x1, float(size)), min(y1, float(size))
    if cx1 - cx0 < 4 or cy1 - cy0 < 4:
        return None
    return [round(cx0, 2), round(cy0, 2), round(cx1 - cx0, 2), round(cy1 - cy0, 2)]


def _augmented_copy(image: Image.Image, boxes: Boxes) -> tuple[Image.Image, Boxes]:
    tensor = tv_tensors.Image(TF.pil_to_tensor(image))
    target = {"boxes": tv_tensors.BoundingBoxes(torch.tensor([b for _, b in boxes], dtype=torch.float32).reshape(-1, 4),
                                                format="XYWH", canvas_size=tuple(tensor.shape[-2:])),
              "labels": torch.tensor([c for c, _ in boxes], dtype=torch.long)}
    tensor, target = augmentation()(tensor, target)
    out = [(int(c), [round(v, 2) for v in b]) for c, b in zip(target["labels"].tolist(), target["boxes"].tolist())]
    return TF.to_pil_image(tensor.as_subclass(torch.Tensor)), out


def write_dataset(
    out: str | Path,
    draw: Draw,
    names: list[str],
    dataset_name: str,
    *,
    train: int,
    valid: int,
    test: int = 0,
    copies: int = 1,
    size: int = 256,
    seed: int = 0,
    overwrite: bool = False,
) -> Path:
    """Write a Roboflow-layout COCO export: ``train/``, ``valid/`` (and ``test/``), each with images and
    ``_annotations.coco.json``. Training images are stored as ``copies`` augmented versions (flip and
    0-20% zoom crop), like the paper's export; validation and test images are stored as drawn."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise InterpruneError(f"{out} already exists; choose another --out or pass --overwrite")
    if min(train, valid) < 1 or test < 0 or copies < 1 or size < 32:
        raise InterpruneError("need --train and --valid >= 1, --copies >= 1 and --size >= 32")
    rng = np.random.default_rng(seed)
    torch_state = torch.random.get_rng_state()
    torch.manual_seed(seed)  # the augmentation draws from torch's generator
    try:
        with atomic_folder(out, overwrite=overwrite) as tmp:
            for split, count in (("train", train), ("valid", valid), ("test", test)):
                if count:
                    _write_split(tmp / split, draw, rng, count, copies if split == "train" else 1, size, names,
                                 dataset_name)
    finally:
        torch.random.set_rng_state(torch_state)
    return out


def _write_split(folder: Path, draw: Draw, rng: np.random.Generator, count: int, copies: int, size: int,
                 names: list[str], dataset_name: str) -> None:
    folder.mkdir(parents=True)
    categories = [{"id": 0, "name": dataset_name, "supercategory": "none"}]
    categories += [{"id": i + 1, "name": n, "supercategory": dataset_name} for i, n in enumerate(names)]
    images, annotations = [], []
    for index in range(count):
        drawn = draw(rng, size)
        versions = [drawn] if copies == 1 else [_augmented_copy(*drawn) for _ in range(copies)]
        for copy, (image, boxes) in enumerate(versions):
            image_id = len(images)
            name = f"{dataset_name}_{index:04d}_{copy}.jpg"
            image.save(folder / name, quality=92)
            images.append({"id": image_id, "file_name": name, "width": image.width, "height": image.height})
            for label, box in boxes:
                annotations.append({"id": len(annotations), "image_id": image_id, "category_id": label + 1,
                                    "bbox": box, "area": round(box[2] * box[3], 2), "iscrowd": 0, "segmentation": []})
    coco = {"info": {"description": f"synthetic {dataset_name} (interprune)"}, "images": images,
            "annotations": annotations, "categories": categories}
    (folder / ROBOFLOW_JSON).write_text(json.dumps(coco))
