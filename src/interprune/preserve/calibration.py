"""Calibration inputs: a few of the user's examples, prepared exactly as the model's own processor does.

Importance scores and compensation look at activations, so they need real inputs of the domain the
small model will serve. Images come from a COCO/Roboflow dataset (its training split) or a plain
folder; text from a file with one example per line. They go through the source's saved image
processor or tokenizer, so resizing, normalisation and padding are the model's, and become *one*
batch: compensation refits each layer on all examples at once.
"""

from __future__ import annotations

import os
import random
import sys
from pathlib import Path
from typing import Any

from ..errors import InterpruneError

__all__ = ["calibration_inputs"]

CHUNK = 8  # images processed at a time


def _image_files(data: Path) -> list[Path]:
    """The training images of a Roboflow export or COCO JSON, else every image in the folder (one split
    of an export is such a folder)."""
    from ..data.coco import ROBOFLOW_JSON, open_dataset
    from ..data.images import image_files

    if data.suffix == ".json" or (data / "train" / ROBOFLOW_JSON).is_file():
        dataset = open_dataset(data)
        return [Path(im["file"]) for im in dataset.train.images]
    if data.is_dir():
        return image_files(data)
    return []


def _warn_short(path: Path, found: int, count: int) -> None:
    if found < count:
        print(f"warning: calibration data {path} has {found} examples, fewer than the {count} asked for; "
              f"using all {found}", file=sys.stderr)


def calibration_inputs(
    data: str | os.PathLike,
    processor: Any,
    *,
    count: int = 32,
    seed: int = 0,
) -> dict[str, Any]:
    """One batch of model inputs from ``data``: ``count`` examples (a seeded sample when there are more).

    ``processor`` is the model's image processor (images) or tokenizer (a ``.txt`` file, one example
    per line). Raises ``InterpruneError`` before any work when ``data`` holds nothing usable.
    """
    path = Path(data)
    if count < 1:
        raise InterpruneError(f"calibration size must be at least 1, got {count}")
    if not path.exists():
        raise InterpruneError(f"calibration data {path} does not exist; give a dataset folder, an image folder "
                              f"or a text file with one example per line")
    rng = random.Random(seed)
    if path.is_file() and path.suffix != ".json":
        if not callable(getattr(processor, "batch_decode", None)):
            raise InterpruneError(f"calibration data {path} is text, but the model has no tokenizer; give images")
        lines = [line.strip() for line in path.read_text().splitlines() if line.strip()]
        if not lines:
            raise InterpruneError(f"calibration file {path} has no non-empty lines")
        _warn_short(path, len(lines), count)
        lines = rng.sample(lines, count) if len(lines) > count else lines
        encoded = processor(lines, padding=True, truncation=True, return_tensors="pt")
        return dict(encoded)
    files = _image_files(path)
    if not files:
        from ..data.images import IMAGE_SUFFIXES

        raise InterpruneError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found in calibration data {path}")
    if not hasattr(processor, "image_mean") and not hasattr(processor, "size"):
        raise InterpruneError(f"calibration data {path} holds images, but the model has no image processor; "
                              f"give a text file")
    from ..data.loader import load_image

    _warn_short(path, len(files), count)
    files = sorted(rng.sample(files, count)) if len(files) > count else files
    return _processed(processor, files, load_image)


def _processed(processor: Any, files: list[Path], load: Any, chunk: int = CHUNK) -> dict[str, Any]:
    """The processor's batch of all ``files``, made ``chunk`` images at a time: processing 32 photos at
    once held every decoded image and several float copies of the whole set (35 MB per 800 px image, twice
    what the batch itself takes). A processor that pads (it returns a ``pixel_mask``) pads every image at
    the bottom and right to the largest, so chunks padded to the largest of all give its one-batch result."""
    parts = []
    for i in range(0, len(files), chunk):
        encoded = processor(images=[load(f) for f in files[i:i + chunk]], return_tensors="pt")
        parts.append({k: encoded[k] for k in ("pixel_values", "pixel_mask") if k in encoded})
    shapes = {tuple(p["pixel_values"].shape[-2:]) for p in parts}
    if len(shapes) > 1 and "pixel_mask" not in parts[0]:  # images of several sizes and no mask: the processor's way
        encoded = processor(images=[load(f) for f in files], return_tensors="pt")
        return {k: encoded[k] for k in ("pixel_values", "pixel_mask") if k in encoded}
    height, width = max(h for h, _ in shapes), max(w for _, w in shapes)
    out = {}
    for key in parts[0]:
        first = parts[0][key]
        # not touched until written (pages are mapped as they fill), so with each part freed once copied
        # the whole set is held about once
        out[key] = first.new_empty((len(files), *first.shape[1:-2], height, width))
    start = 0
    while parts:
        part = parts.pop(0)
        for key, value in part.items():
            rows = out[key][start:start + len(value)]
            rows.zero_()
            rows[..., :value.shape[-2], :value.shape[-1]] = value
        start += len(part["pixel_values"])
    return out
