"""Procedural look-alike of the paper's Old School RuneScape rocks: grey stones with ore veins.

The nine classes differ the way ore rocks do, by the colour and texture of their veins on the same
grey stone, so telling them apart takes the same kind of looking as the real dataset.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from .synthetic import Boxes, clip_box, ground

# name: (vein colour, number of vein blobs, relative blob size)
ORES: dict[str, tuple[tuple[int, int, int], int, float]] = {
    "copper": ((196, 116, 52), 5, 0.22),
    "tin": ((205, 205, 196), 9, 0.13),
    "iron": ((118, 52, 38), 4, 0.26),
    "coal": ((28, 28, 30), 7, 0.18),
    "silver": ((232, 232, 242), 4, 0.2),
    "gold": ((232, 190, 40), 6, 0.17),
    "mithril": ((78, 78, 160), 5, 0.2),
    "adamantite": ((62, 118, 64), 5, 0.21),
    "runite": ((74, 170, 196), 4, 0.24),
}
NAMES = list(ORES)
GROUNDS = [(88, 120, 56), (122, 98, 64), (92, 86, 80), (160, 140, 98), (70, 92, 60)]  # grass, dirt, cave, sand, moss


def _blob(rng: np.random.Generator, cx: float, cy: float, radius: float, points: int, jitter: float) -> list[tuple]:
    angles = np.sort(rng.uniform(0, 2 * np.pi, points))
    radii = radius * rng.uniform(1 - jitter, 1 + jitter * 0.5, points)
    return [(cx + r * np.cos(a), cy + r * 0.85 * np.sin(a)) for a, r in zip(angles, radii)]


def draw_rocks(rng: np.random.Generator, size: int) -> tuple[Image.Image, Boxes]:
    """One scene: 1-6 rocks on grass, dirt or cave floor, some overlapping, some cut by the border."""
    base = np.asarray(ground(rng, size, GROUNDS[rng.integers(len(GROUNDS))], spread=18.0), np.float32)
    image = Image.fromarray(base.clip(0, 255).astype(np.uint8))
    pen = ImageDraw.Draw(image)
    for _ in range(rng.integers(6, 18)):  # pebbles and clutter that are not rocks
        x, y, r = rng.uniform(0, size), rng.uniform(0, size), rng.uniform(1, size * 0.02)
        grey = int(rng.integers(70, 170))
        pen.ellipse([x - r, y - r, x + r, y + r], fill=(grey, grey - 4, grey - 8))
    boxes: Boxes = []
    for _ in range(rng.integers(1, 7)):
        label = int(rng.integers(len(NAMES)))
        colour, blobs, blob_size = ORES[NAMES[label]]
        radius = size * rng.uniform(0.07, 0.16)
        cx, cy = rng.uniform(-0.3 * radius, size + 0.3 * radius), rng.uniform(-0.3 * radius, size + 0.3 * radius)
        outline = _blob(rng, cx, cy, radius, int(rng.integers(9, 15)), 0.3)
        xs, ys = [p[0] for p in outline], [p[1] for p in outline]
        box = clip_box(min(xs), min(ys), max(xs), max(ys), size)
        if box is None:
            continue
        stone = int(rng.integers(95, 150))
        pen.polygon([(x + radius * 0.08, y + radius * 0.1) for x, y in outline], fill=(stone // 2,) * 3)  # shadow
        pen.polygon(outline, fill=(stone, stone - 3, stone - 6))
        pen.polygon(_blob(rng, cx - radius * 0.2, cy - radius * 0.25, radius * 0.45, 8, 0.3),
                    fill=(min(stone + 30, 255),) * 3)  # lit top
        for _ in range(blobs):
            angle, dist = rng.uniform(0, 2 * np.pi), rng.uniform(0, 0.6) * radius
            tint = np.clip(np.asarray(colour) + rng.normal(0, 10, 3), 0, 255).astype(int)
            vein = _blob(rng, cx + dist * np.cos(angle), cy + dist * np.sin(angle), radius * blob_size, 7, 0.4)
            pen.polygon(vein, fill=tuple(int(v) for v in tint), outline=tuple(int(v * 0.6) for v in tint))
        boxes.append((label, box))
    return image.filter(ImageFilter.GaussianBlur(0.6)), boxes
