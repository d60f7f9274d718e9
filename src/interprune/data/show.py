"""Draw images with their boxes and class names in a grid, so a person can look at a dataset."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageColor, ImageDraw, ImageFont
from torchvision.transforms.v2 import functional as TF
from torchvision.utils import make_grid

from ..errors import InterpruneError
from .augment import augmentation
from .coco import DetectionData
from .loader import DetectionDataset

PALETTE = ["#e6194b", "#3cb44b", "#ffe119", "#4363d8", "#f58231", "#911eb4", "#46f0f0", "#f032e6",
           "#bcf60c", "#fabebe", "#008080", "#e6beff"]
TILE = 256  # side of one image in a grid


def label_style(height: int, width: int) -> tuple[int, int]:
    """Box line width and caption font size (pixels) for an image of this size: both grow with the image,
    so names stay legible on a 160 px tile and on a 2048 px photo alike."""
    side = min(height, width)
    return max(1, round(side / 200)), max(10, round(side / 28))


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)  # Pillow's built-in scalable font (needs FreeType)
    except (TypeError, ImportError, OSError):
        return ImageFont.load_default()


def draw_boxes(image: torch.Tensor, boxes_xyxy: torch.Tensor, labels: list[int], names: list[str],
               scores: list[float] | None = None) -> torch.Tensor:
    """One uint8 image with coloured boxes, each captioned (with its score when given) on a filled label."""
    if not len(labels):
        return image
    height, width = image.shape[-2:]
    line, size = label_style(height, width)
    font, pad = _font(size), max(1, size // 6)
    picture = Image.fromarray(image.permute(1, 2, 0).contiguous().numpy())
    draw = ImageDraw.Draw(picture)
    for index, (box, label) in enumerate(zip(boxes_xyxy.tolist(), labels)):
        caption = names[label] if scores is None else f"{names[label]} {scores[index]:.2f}"
        colour = PALETTE[label % len(PALETTE)]
        x0, y0, x1, y1 = box
        draw.rectangle([x0, y0, max(x0, x1), max(y0, y1)], outline=colour, width=line)
        left, top, right, bottom = draw.textbbox((0, 0), caption, font=font)
        w, h = right - left + 2 * pad, bottom - top + 2 * pad
        x = min(max(0, x0), max(0, width - w))
        y = y0 - h if y0 - h >= 0 else max(0, y0)  # above the box, or inside it at the top border
        red, green, blue = ImageColor.getrgb(colour)[:3]
        ink = "black" if 0.299 * red + 0.587 * green + 0.114 * blue > 140 else "white"
        draw.rectangle([x, y, x + w, y + h], fill=colour)
        draw.text((x + pad - left, y + pad - top), caption, fill=ink, font=font)
    return torch.from_numpy(np.array(picture)).permute(2, 0, 1).contiguous()


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
        height, width = image.shape[-2:]
        xyxy = xyxy * torch.tensor([TILE / width, TILE / height] * 2)  # draw at the tile's size, so captions stay legible
        tile = TF.resize(image, [TILE, TILE], antialias=True)
        tiles.append(draw_boxes(tile, xyxy, [a["category_id"] for a in target["annotations"]], data.names))
    grid = make_grid(tiles, nrow=min(4, len(tiles)), padding=4, pad_value=255)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid.permute(1, 2, 0).numpy()).save(out)
    return out
