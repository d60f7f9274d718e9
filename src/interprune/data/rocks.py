"""Procedural look-alike of the paper's Old School RuneScape rocks: big stones with large ore patches.

In the game a rock fills a good part of the screenshot and its ore shows as large, saturated patches of
one colour per ore, so that is what is drawn here: a stone of 35-70 px at 160 px (several stride-16
feature cells), most of its face covered by patches of its ore's colour, clipped to the stone. The
classes are told apart the way a player tells them apart, by that colour (and a little by texture:
tin and silver, both pale, differ in brightness and in the grain of their patches).
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from .synthetic import Boxes, clip_box, ground

# name: (patch colour, patches per rock, patch radius relative to the rock's): the game's ore colours
ORES: dict[str, tuple[tuple[int, int, int], int, float]] = {
    "copper": ((232, 118, 36), 4, 0.42),      # orange
    "tin": ((178, 178, 172), 4, 0.44),        # light grey
    "iron": ((146, 46, 30), 4, 0.42),         # rust
    "coal": ((22, 22, 24), 4, 0.42),          # black
    "silver": ((250, 250, 255), 4, 0.42),     # white
    "gold": ((250, 208, 26), 4, 0.42),        # yellow
    "mithril": ((42, 48, 168), 4, 0.42),      # dark blue
    "adamantite": ((40, 158, 58), 4, 0.42),   # green
    "runite": ((44, 214, 226), 4, 0.42),      # cyan
}
NAMES = list(ORES)
GROUNDS = [(88, 120, 56), (122, 98, 64), (92, 86, 80), (160, 140, 98), (70, 92, 60)]  # grass, dirt, cave, sand, moss
RADIUS = (0.11, 0.22)  # a rock's radius as a fraction of the image side


def _blob(rng: np.random.Generator, cx: float, cy: float, radius: float, points: int, jitter: float) -> list[tuple]:
    angles = np.sort(rng.uniform(0, 2 * np.pi, points))
    radii = radius * rng.uniform(1 - jitter, 1 + jitter * 0.5, points)
    return [(cx + r * np.cos(a), cy + r * 0.85 * np.sin(a)) for a, r in zip(angles, radii)]


def _place(rng: np.random.Generator, size: int, placed: list[tuple[float, float, float]]) -> tuple[float, float, float]:
    """Centre and radius of the next rock: anywhere (cut by the border too), overlapping earlier rocks at most
    partly, as rocks in the game do; after a few tries, wherever the last try fell."""
    for _ in range(6):
        radius = size * rng.uniform(*RADIUS)
        cx, cy = rng.uniform(-0.3 * radius, size + 0.3 * radius), rng.uniform(-0.3 * radius, size + 0.3 * radius)
        if all(np.hypot(cx - x, cy - y) > 0.75 * (radius + r) for x, y, r in placed):
            break
    return cx, cy, radius


def _rock(rng: np.random.Generator, size: int, outline: list[tuple], cx: float, cy: float, radius: float,
          ore: str) -> tuple[Image.Image, Image.Image]:
    """One rock as a layer and the mask of its stone: a lit grey-brown stone whose face is mostly covered by
    large patches of its ore's colour, each with a darker rim; nothing of it reaches past the stone's edge."""
    colour, patches, patch_size = ORES[ore]
    stone = int(rng.integers(96, 126))
    layer, mask = Image.new("RGB", (size, size), (stone, stone - 6, stone - 14)), Image.new("L", (size, size))
    pen = ImageDraw.Draw(layer)
    ImageDraw.Draw(mask).polygon(outline, fill=255)
    pen.polygon(_blob(rng, cx - radius * 0.25, cy - radius * 0.3, radius * 0.45, 8, 0.3),
                fill=(stone + 22, stone + 16, stone + 8))  # lit top
    for _ in range(patches):
        angle, dist, r = rng.uniform(0, 2 * np.pi), rng.uniform(0.1, 0.55) * radius, radius * patch_size
        px, py = cx + dist * np.cos(angle), cy + dist * np.sin(angle)
        tint = tuple(int(v) for v in np.clip(np.asarray(colour) + rng.normal(0, 8, 3), 0, 255))
        pen.polygon(_blob(rng, px, py, r, 9, 0.35), fill=tint, outline=tuple(int(v * 0.4) for v in tint), width=2)
        if ore == "tin":  # tin's pale grey is grainy, silver's white is smooth and bright
            for a, d in zip(rng.uniform(0, 2 * np.pi, 4), rng.uniform(0, 0.6 * r, 4)):
                x, y = px + d * np.cos(a), py + d * np.sin(a)
                pen.ellipse([x - 1.5, y - 1.5, x + 1.5, y + 1.5], fill=(118, 118, 114))
    pen.polygon(outline, outline=(stone // 2,) * 3, width=2)
    return layer, mask


def draw_rocks(rng: np.random.Generator, size: int) -> tuple[Image.Image, Boxes]:
    """One scene: 1-6 rocks on grass, dirt, cave, sand or moss with pebbles, some overlapping, some cut by the
    border."""
    base = np.asarray(ground(rng, size, GROUNDS[rng.integers(len(GROUNDS))], spread=18.0), np.float32)
    image = Image.fromarray(base.clip(0, 255).astype(np.uint8))
    pen = ImageDraw.Draw(image)
    for _ in range(rng.integers(6, 18)):  # pebbles and clutter that are not rocks
        x, y, r = rng.uniform(0, size), rng.uniform(0, size), rng.uniform(1, size * 0.02)
        grey = int(rng.integers(70, 170))
        pen.ellipse([x - r, y - r, x + r, y + r], fill=(grey, grey - 4, grey - 8))
    boxes: Boxes = []
    placed: list[tuple[float, float, float]] = []
    for _ in range(rng.integers(1, 7)):
        label = int(rng.integers(len(NAMES)))
        cx, cy, radius = _place(rng, size, placed)
        outline = _blob(rng, cx, cy, radius, int(rng.integers(9, 15)), 0.25)
        xs, ys = [p[0] for p in outline], [p[1] for p in outline]
        box = clip_box(min(xs), min(ys), max(xs), max(ys), size)
        if box is None:
            continue
        placed.append((cx, cy, radius))
        pen.polygon([(x + radius * 0.08, y + radius * 0.1) for x, y in outline], fill=(36, 34, 32))  # shadow
        layer, mask = _rock(rng, size, outline, cx, cy, radius, NAMES[label])
        image.paste(layer, (0, 0), mask)
        boxes.append((label, box))
    return image.filter(ImageFilter.GaussianBlur(0.6)), boxes
