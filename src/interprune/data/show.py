"""Draw images with their boxes and class names in a grid, so a person can look at a dataset."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image
from torchvision.transforms.v2 import functional as TF
from torchvision.utils import draw_bounding_boxes, make_grid

from ..errors import InterpruneError
from .augment import augmentation
from .coco import DetectionData
from .loader import DetectionDataset

PALETTE = ["#e6194b", "#3cb44b", "#ffe119", "#4363d8", "#f58231", "#911eb4", "#46f0f0", "#f032e6",
           "#bcf60c", "#fabebe", "#008080", "#e6beff"]


def draw_boxes(image: torch.Tensor, boxes_xyxy: torch.Tensor, labels: list[int], names: list[str],
               scores: list[float] | None = None) -> torch.Tensor:
    """One uint8 image with coloured, captioned boxes (captions carry scores when given)."""
    captions = [names[c] if scores is None else f"{names[c]} {s:.2f}" for c, s in
                zip(labels, scores or [0.0] * len(labels))]
    colours = [PALETTE[c % len(PALETTE)] for c in labels]
    if not len(labels):
        return image
    return draw_bounding_boxes(image, boxes_xyxy, captions, colours, width=2)


def dataset_grid(data: DetectionData, out: str | Path, *, split: str = "train", count: int = 16,
                 augment: bool = False, seed: int = 0) -> Path:
    """Save a grid of the first ``count`` images of ``split`` (augmented on the fly if asked)."""
    if getattr(data, split) is None:
        raise InterpruneError(f"{data.source} has no {split} split; pick --split train or valid")
    torch.manual_seed(seed)
    dataset = DetectionDataset(getattr(data, split), augmentation() if augment else None)
    tiles = []
    for index in range(min(count, len(dataset))):
        image, target = dataset[index]
        xywh = torch.tensor([a["bbox"] for a in target["annotations"]], dtype=torch.float32).reshape(-1, 4)
        xyxy = torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], dim=1)
        tile = draw_boxes(image, xyxy, [a["category_id"] for a in target["annotations"]], data.names)
        tiles.append(TF.resize(tile, [256, 256], antialias=True))
    grid = make_grid(tiles, nrow=min(4, len(tiles)), padding=4, pad_value=255)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid.permute(1, 2, 0).numpy()).save(out)
    return out
