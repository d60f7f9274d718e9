"""Calibration inputs: a few of the user's examples, prepared exactly as the model's own processor does.

Importance scores and compensation look at activations, so they need real inputs of the domain the
small model will serve. Images come from a COCO/Roboflow dataset (its training split) or a plain
folder; text from a file with one example per line. They go through the source's saved image
processor or tokenizer, so resizing, normalisation and padding are the model's, and become one
batch (``calibration_inputs``) or, for the recipe, mini-batches of it made when a pass first needs them
(``calibration_batches``): statistics summed over them are those of the one batch.
"""

from __future__ import annotations

import os
import random
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import InterpruneError

if TYPE_CHECKING:
    from ..walk import Batches

__all__ = ["calibration_inputs", "calibration_batches", "auto_batch", "images_per_batch", "on_device"]

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
    found = _sample(data, processor, count, seed)
    if isinstance(found, dict):
        return found
    from ..data.loader import load_image

    return _processed(processor, found, load_image)


def calibration_batches(
    data: str | os.PathLike,
    processor: Any,
    *,
    count: int = 32,
    seed: int = 0,
    batch: int | str | None = "auto",
    device: str = "cpu",
) -> "Batches":
    """The examples of ``calibration_inputs`` as mini-batches of ``batch`` examples (``"auto"``:
    ``auto_batch``) on ``device``, equal to that one batch split.

    Images are processed one mini-batch at a time, when a pass first needs it (``Batches(made=True)``), and
    padded to the largest image of all, which a first pass over the images alone finds: held as one batch,
    32 images at 800 px took 680 MB for the whole recipe. Text is tokenized at once (one padding)."""
    from ..walk import Batches

    found = _sample(data, processor, count, seed)
    if isinstance(found, dict):
        size = auto_batch(found) if batch == "auto" else batch
        return Batches.of(on_device(found, device), size)
    from ..data.loader import load_image

    shapes, masked = set(), True
    for file in found:
        encoded = processor(images=[load_image(file)], return_tensors="pt")
        shapes.add(tuple(encoded["pixel_values"].shape[-2:]))
        masked = masked and "pixel_mask" in encoded
    if len(shapes) > 1 and not masked:  # images of several sizes and no mask: the processor's own one batch
        inputs = _processed(processor, found, load_image)
        return Batches.of(on_device(inputs, device), auto_batch(inputs) if batch == "auto" else batch)
    height, width = max(h for h, _ in shapes), max(w for _, w in shapes)
    size = len(found) if batch is None else images_per_batch(height, width) if batch == "auto" else max(1, int(batch))
    groups = [found[i:i + size] for i in range(0, len(found), size)]

    def make(i: int) -> dict[str, Any]:
        return on_device(_processed(processor, groups[i], load_image, size=(height, width)), device)

    return Batches(len(groups), make, [len(g) for g in groups], made=True)


AUTO_EXAMPLES, AUTO_PIXELS = 8, 2_000_000


def images_per_batch(height: int, width: int) -> int:
    """The default mini-batch of images: at most 8, and at most 2 million pixels. A detector's backbone at
    800 px keeps several maps of its whole mini-batch alive: DETR-R50 with 32 images peaked at 3.8 GB in
    mini-batches of 8 and at 2.5 GB in mini-batches of 2, and ran no slower (a convolution at that size
    keeps both cores busy on one image)."""
    return max(1, min(AUTO_EXAMPLES, AUTO_PIXELS // (height * width)))


def auto_batch(inputs: Any) -> int:
    """The default mini-batch of one batch of inputs: 8 examples, or fewer images (``images_per_batch``)."""
    pixels = inputs.get("pixel_values") if isinstance(inputs, dict) else None
    if not hasattr(pixels, "shape") or len(pixels.shape) < 3:
        return AUTO_EXAMPLES
    return images_per_batch(pixels.shape[-2], pixels.shape[-1])


def on_device(inputs: dict[str, Any], device: str) -> dict[str, Any]:
    """Calibration inputs (one batch of tensors) moved to ``device``."""
    if device == "cpu":
        return inputs
    return {k: v.to(device) if hasattr(v, "to") else v for k, v in inputs.items()}


def _sample(data: str | os.PathLike, processor: Any, count: int, seed: int) -> dict[str, Any] | list[Path]:
    """The tokenized lines of a text file, or the image files to process: checked, and a seeded sample of
    ``count`` when there are more."""
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
    _warn_short(path, len(files), count)
    return sorted(rng.sample(files, count)) if len(files) > count else files


def _processed(processor: Any, files: list[Path], load: Any, chunk: int = CHUNK,
               size: tuple[int, int] | None = None) -> dict[str, Any]:
    """The processor's batch of all ``files``, made ``chunk`` images at a time: processing 32 photos at
    once held every decoded image and several float copies of the whole set (35 MB per 800 px image, twice
    what the batch itself takes). A processor that pads (it returns a ``pixel_mask``) pads every image at
    the bottom and right to the largest (or to ``size``), so chunks padded to the largest of all give its
    one-batch result."""
    parts = []
    for i in range(0, len(files), chunk):
        encoded = processor(images=[load(f) for f in files[i:i + chunk]], return_tensors="pt")
        parts.append({k: encoded[k] for k in ("pixel_values", "pixel_mask") if k in encoded})
    shapes = {tuple(p["pixel_values"].shape[-2:]) for p in parts}
    if len(shapes) > 1 and "pixel_mask" not in parts[0]:  # images of several sizes and no mask: the processor's way
        encoded = processor(images=[load(f) for f in files], return_tensors="pt")
        return {k: encoded[k] for k in ("pixel_values", "pixel_mask") if k in encoded}
    height, width = size or (max(h for h, _ in shapes), max(w for _, w in shapes))
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
