"""A second synthetic domain: coloured everyday shapes on cluttered backgrounds, ten classes.

The demo pre-trains its source detector here and fine-tunes on rocks, so that, as in the paper
(COCO to RuneScape), what the big model learned comes from another domain than the task.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from .synthetic import Boxes, clip_box, ground

NAMES = ["circle", "square", "triangle", "star", "hexagon", "cross", "ring", "diamond", "crescent", "arrow"]


def _polygon(kind: str, cx: float, cy: float, r: float, turn: float) -> list[tuple[float, float]]:
    def ring(n: int, radii: list[float], offset: float = 0.0) -> list[tuple[float, float]]:
        angles = offset + turn + np.arange(n * len(radii)) * 2 * np.pi / (n * len(radii))
        rs = radii * n
        return [(cx + rr * np.cos(a), cy + rr * np.sin(a)) for a, rr in zip(angles, rs)]

    if kind == "square":
        return ring(4, [r], np.pi / 4)
    if kind == "triangle":
        return ring(3, [r], -np.pi / 2)
    if kind == "star":
        return ring(5, [r, r * 0.45], -np.pi / 2)
    if kind == "hexagon":
        return ring(6, [r])
    if kind == "diamond":
        return [(cx, cy - r), (cx + r * 0.6, cy), (cx, cy + r), (cx - r * 0.6, cy)]
    if kind == "cross":
        a, b = r, r * 0.35
        pts = [(-b, -a), (b, -a), (b, -b), (a, -b), (a, b), (b, b), (b, a), (-b, a), (-b, b), (-a, b), (-a, -b), (-b, -b)]
        return [(cx + x, cy + y) for x, y in pts]
    if kind == "arrow":
        pts = [(-r, -r * 0.3), (r * 0.2, -r * 0.3), (r * 0.2, -r * 0.75), (r, 0), (r * 0.2, r * 0.75),
               (r * 0.2, r * 0.3), (-r, r * 0.3)]
        c, s = np.cos(turn), np.sin(turn)
        return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in pts]
    raise KeyError(kind)


def draw_shapes(rng: np.random.Generator, size: int) -> tuple[Image.Image, Boxes]:
    """One scene: 1-4 shapes in random colours over stripes, scribbles and blotches."""
    image = Image.fromarray(ground(rng, size, tuple(int(v) for v in rng.integers(60, 200, 3)), 40)
                            .clip(0, 255).astype(np.uint8))
    pen = ImageDraw.Draw(image)
    for _ in range(rng.integers(4, 12)):  # clutter: lines and thin outlines
        x0, y0, x1, y1 = rng.uniform(0, size, 4)
        pen.line([x0, y0, x1, y1], fill=tuple(int(v) for v in rng.integers(0, 255, 3)), width=int(rng.integers(1, 3)))
    boxes: Boxes = []
    for _ in range(rng.integers(1, 5)):
        label = int(rng.integers(len(NAMES)))
        kind, r = NAMES[label], size * rng.uniform(0.08, 0.2)
        cx, cy = rng.uniform(0.5 * r, size - 0.5 * r), rng.uniform(0.5 * r, size - 0.5 * r)
        colour = tuple(int(v) for v in rng.integers(0, 255, 3))
        if kind in ("circle", "ring", "crescent"):
            extent = [cx - r, cy - r, cx + r, cy + r]
            behind = image.getpixel((int(min(max(cx, 0), size - 1)), int(min(max(cy - r * 1.2, 0), size - 1))))
            pen.ellipse(extent, fill=colour)
            if kind == "ring":
                pen.ellipse([cx - r * 0.55, cy - r * 0.55, cx + r * 0.55, cy + r * 0.55], fill=behind)
            if kind == "crescent":
                pen.ellipse([cx - r * 0.4, cy - r * 1.05, cx + r * 1.4, cy + r * 0.85], fill=behind)
            xs, ys = [extent[0], extent[2]], [extent[1], extent[3]]
        else:
            points = _polygon(kind, cx, cy, r, rng.uniform(0, 2 * np.pi) if kind == "arrow" else rng.uniform(-0.2, 0.2))
            pen.polygon(points, fill=colour)
            xs, ys = [p[0] for p in points], [p[1] for p in points]
        box = clip_box(min(xs), min(ys), max(xs), max(ys), size)
        if box is not None:
            boxes.append((label, box))
    return image, boxes
