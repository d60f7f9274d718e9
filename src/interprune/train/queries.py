"""Object queries against objects per image: a DETR-style detector predicts one object per query, so an
image with more objects than the model has queries can never be fully found. ``train`` warns before it
trains, naming the count and the fix, and ``--num-queries N`` applies the fix: the model is grown (or cut) to
N queries by a shrink (``--set num_queries=N --method first``: the source's queries kept as they are, new ones
initialised as the model initialises them), written once into the run folder and trained from there.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from ..data.coco import DetectionData
from ..errors import InterpruneError

__all__ = ["object_queries", "crowded_images", "queries_warning", "with_queries", "START"]

START = "start"  # the run folder's copy of the model with its queries changed
QUERY_FIELDS = ("num_queries", "num_detection_tokens")  # DETR family; YOLOS


def object_queries(config: Any) -> tuple[str, int] | None:
    """The config field that sets how many objects the detector can find per image, and its value."""
    for name in QUERY_FIELDS:
        value = getattr(config, name, None)
        if isinstance(value, int):
            return name, value
    return None


def crowded_images(data: DetectionData, limit: int) -> tuple[int, int, int]:
    """(images with more than ``limit`` boxes, images in all, the most boxes in one image), over the
    training and validation splits."""
    counts = [len(data.train.boxes.get(im["id"], [])) for im in data.train.images]
    counts += [len(data.valid.boxes.get(im["id"], [])) for im in data.valid.images]
    return sum(c > limit for c in counts), len(counts), max(counts, default=0)


def queries_warning(data: DetectionData, config: Any) -> str | None:
    """One warning line when some images hold more objects than the model has queries (it can never find
    them all: each query predicts one object), naming the count and the fix; ``None`` when they fit."""
    found = object_queries(config)
    if found is None:
        return None
    name, queries = found
    over, total, most = crowded_images(data, queries)
    if not over:
        return None
    wanted = 10 * math.ceil(most * 1.25 / 10)  # a quarter more than the fullest image, in tens
    how = (f"train with --num-queries {wanted} (in a sweep, num_queries: {wanted} under train:) to grow the model "
           f"to {wanted} queries first, or shrink with --set {name}={wanted}")
    return (f"warning: {over} of {total} images hold more than {queries} objects (up to {most}), but the model has "
            f"{queries} object queries ({name}) and finds at most {queries} objects per image; {how}")


def with_queries(model: str | os.PathLike, config: Any, queries: int, out: Path, seed: int = 0) -> str | os.PathLike:
    """``model`` with ``queries`` object queries: itself when it has them already, else ``out/start``, a
    shrink of it that grows (or cuts) the queries, written the first time (a resumed run reuses it)."""
    found = object_queries(config)
    if found is None:
        raise InterpruneError(f"--num-queries: {model} is a {config.model_type} model, which has no object queries "
                              f"({' or '.join(QUERY_FIELDS)}) to change")
    name, current = found
    if current == queries:
        return model
    start = out / START
    if not (start / "config.json").is_file():
        from ..hf.models import save
        from ..weights.shrink import shrink  # the whole shrink machinery: only when asked to

        grown, report = shrink(model, {name: queries}, "first", seed=seed)  # kept as they were, new ones fresh
        save(grown, start, report=report, source=model, overwrite=True)
        print(f"model: {name} {current} -> {queries}: the model was resized by a shrink into {start}")
    return start
