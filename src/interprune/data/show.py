"""Draw images with their boxes and class names in a grid, so a person can look at a dataset."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageColor, ImageDraw, ImageFont
from torchvision.transforms.v2 import functional as TF
from torchvision.utils import make_grid

from ..atomic import write_bytes
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


def tile_shape(sizes: list[tuple[int, int]]) -> tuple[int, int]:
    """(height, width) of the grid's tiles for images of these (height, width): ``TILE`` high and as wide as
    the images' median aspect ratio (at most twice as wide or high), so photos keep their proportions."""
    ratios = sorted(w / h for h, w in sizes) or [1.0]
    ratio = min(2.0, max(0.5, ratios[len(ratios) // 2]))
    return (TILE, round(TILE * ratio)) if ratio >= 1 else (round(TILE / ratio), TILE)


def fit(image: torch.Tensor, xyxy: torch.Tensor, shape: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """``image`` scaled to fit in ``shape`` without distortion, centred on white, with its boxes moved along."""
    height, width = image.shape[-2:]
    scale = min(shape[0] / height, shape[1] / width)
    new_h, new_w = max(1, round(height * scale)), max(1, round(width * scale))
    top, left = (shape[0] - new_h) // 2, (shape[1] - new_w) // 2
    tile = torch.full((image.shape[0], *shape), 255, dtype=image.dtype)
    tile[:, top:top + new_h, left:left + new_w] = TF.resize(image, [new_h, new_w], antialias=True)
    moved = xyxy * torch.tensor([new_w / width, new_h / height] * 2) + torch.tensor([left, top] * 2)
    return tile, moved


def dataset_grid(data: DetectionData, out: str | Path, *, split: str = "train", count: int = 16,
                 augment: bool = False, seed: int = 0) -> Path:
    """Save a grid of the first ``count`` images of ``split`` (augmented on the fly if asked)."""
    if getattr(data, split) is None:
        raise InterpruneError(f"{data.source} has no {split} split; pick --split train or valid")
    torch.manual_seed(seed)
    dataset = DetectionDataset(getattr(data, split), augmentation() if augment else None)
    drawn = []
    for index in range(min(count, len(dataset))):
        image, target = dataset[index]
        xywh = torch.tensor([a["bbox"] for a in target["annotations"]], dtype=torch.float32).reshape(-1, 4)
        drawn.append((image, torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], dim=1),
                      [a["category_id"] for a in target["annotations"]]))
    shape = tile_shape([tuple(image.shape[-2:]) for image, _, _ in drawn])
    tiles = []
    for image, xyxy, labels in drawn:
        tile, moved = fit(image, xyxy, shape)  # drawn at the tile's size, so captions stay legible
        tiles.append(draw_boxes(tile, moved, labels, data.names))
    grid = make_grid(tiles, nrow=min(4, len(tiles)), padding=4, pad_value=255)
    encoded = io.BytesIO()
    kind = Image.registered_extensions().get(Path(out).suffix.lower(), "PNG")  # grid.jpg is a JPEG
    Image.fromarray(grid.permute(1, 2, 0).numpy()).save(encoded, format=kind)
    return write_bytes(out, encoded.getbuffer())


def split_counts(data: DetectionData) -> str:
    """``train 202 images (1,904 boxes), valid 58 (520), test 29 (270)``: every split the dataset has."""
    parts = []
    for name in ("train", "valid", "test"):
        split = getattr(data, name)
        if split is not None:
            parts.append(f"{name} {len(split)}{' images' if not parts else ''} ({split.num_boxes():,} boxes)")
    return ", ".join(parts)
