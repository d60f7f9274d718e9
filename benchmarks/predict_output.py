"""What ``interprune predict`` writes for large photos: size and time per picture, full-size PNG (as before
issue 23) against the default (JPEG, longest side 1280 px), and how many boxes and captions one picture holds.

Photos are synthetic rocks scenes cut to 2048 x 1371 (the size of the chess-board export of issue 23); the
model is the demo's source (a Conditional DETR with 20 queries), run at threshold 0 so every query draws.

    python benchmarks/predict_output.py [--images 8]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from interprune.data.rocks import draw_rocks
from interprune.hf.models import load_for_inference
from interprune.predict import predict
from interprune.sources import SHIPPED


def photos(folder: Path, count: int) -> list[Path]:
    rng = np.random.default_rng(0)
    folder.mkdir()
    files = []
    for index in range(count):
        image, _ = draw_rocks(rng, 2048)
        files.append(folder / f"photo{index}.jpg")
        image.crop((0, 0, 2048, 1371)).save(files[-1], quality=92)
    return files


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(1)
    source = SHIPPED["demo"]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        photos(folder / "photos", args.images)
        load_for_inference(source)  # warm caches so neither setting pays the first load
        for label, options in (("full-size PNG (the old output)", dict(kind="png", max_side=None)),
                               ("JPEG, longest side 1280 (default)", dict(kind="jpg", max_side=1280))):
            out = folder / label.split()[0]
            start = time.perf_counter()
            found = predict(source, folder / "photos", out, threshold=0.0, **options)
            seconds = time.perf_counter() - start
            sizes = [p.stat().st_size for p in out.iterdir()]
            print(f"{label:<36} {np.mean(sizes) / 1e6:6.2f} MB per picture, {seconds / len(found):5.2f} s per image "
                  f"(load included), {max(f.detections for f in found)} boxes at most, one caption each")


if __name__ == "__main__":
    main()
