"""``interprune predict``: draw a detector's findings on images, so a person can judge it by eye."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from .atomic import write_bytes
from .data.coco import check_image
from .data.images import image_files
from .data.loader import load_image
from .data.show import draw_boxes
from .errors import InterpruneError
from .hf.models import load_for_inference

@torch.no_grad()
def predict(model: str | os.PathLike, images: str | os.PathLike, out: str | os.PathLike,
            threshold: float = 0.5, limit: int | None = None) -> list[dict]:
    """Run ``model`` on every image in ``images`` and write ``out/<name>.png`` with boxes and scores."""
    files = image_files(images, recursive=False) if Path(images).is_dir() else []
    if not files:
        raise InterpruneError(f"{images}: no images (.jpg, .png, ...) found; point --images at a folder of images")
    files = files[:limit]
    for file in files:  # every image decodes before any output is written
        check_image(file, "--images")
    config, processor, detector = load_for_inference(model)
    names = [config.id2label.get(i, str(i)) for i in range(config.num_labels)]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    found = []
    for file in files:
        image = load_image(file)
        drawn, count = detect_and_draw(processor, detector, image, names, threshold)
        png = io.BytesIO()
        Image.fromarray(drawn.permute(1, 2, 0).numpy()).save(png, format="PNG")
        write_bytes(out / f"{file.stem}.png", png.getbuffer())  # whole pictures only, even when killed
        found.append({"image": file.name, "detections": count})
    return found


@torch.no_grad()
def detect_and_draw(processor: Any, detector: Any, image: torch.Tensor, names: list[str],
                    threshold: float = 0.5, top: int | None = None) -> tuple[torch.Tensor, int]:
    """``image`` (uint8, C x H x W) with the detections scoring at least ``threshold`` drawn on it, and their
    count; with ``top``, the ``top`` most confident detections whatever their scores (a model early in
    training may rank the right boxes first while none of them clears a fixed threshold)."""
    inputs = processor(images=image, return_tensors="pt")
    outputs = detector(pixel_values=inputs["pixel_values"], pixel_mask=inputs.get("pixel_mask"))
    result = processor.post_process_object_detection(outputs, threshold=0.0 if top else threshold,
                                                     target_sizes=[tuple(image.shape[-2:])])[0]
    if top is not None:
        keep = result["scores"].argsort(descending=True)[:top]
        result = {k: v[keep] for k, v in result.items()}
    labels = result["labels"].tolist()
    return draw_boxes(image, result["boxes"], labels, names, result["scores"].tolist()), len(labels)
