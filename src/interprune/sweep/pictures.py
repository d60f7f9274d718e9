"""What the models see: predictions on a few validation images, the sweep's telling models side by side.

Columns: the ground truth, the best full-size model, the best smaller one and the smaller random-init
baseline (each its first finished seed), so a reader sees by eye whether an initialisation gives a small
model that works. Drawn with ``predict``'s drawing.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from ..data import open_dataset  # noqa: E402
from ..data.loader import load_image  # noqa: E402
from ..data.show import draw_boxes  # noqa: E402
from ..predict import detect_and_draw  # noqa: E402
from ..hf.models import load_for_inference  # noqa: E402
from .config import SweepConfig  # noqa: E402
from .results import Result, SweepLayout, mean_std  # noqa: E402

__all__ = ["predictions_figure", "telling_models"]


def _rank(result: Result) -> tuple[float, float]:
    """Best first: higher mAP@50, then lower final validation loss."""
    map50 = mean_std(result.values("map_50"))[0]
    loss = mean_std(result.values("final_val_loss"))[0]
    return (-(map50 if map50 is not None else -1.0), loss if loss is not None else float("inf"))


def telling_models(config: SweepConfig, results: list[Result]) -> list[tuple[str, Result]]:
    """(column title, experiment): the best full-size model, the best smaller one, the smaller random init."""
    def best(pool: list[Result]) -> Result | None:
        return min(pool, key=_rank) if pool else None

    full = best([r for r in results if r.size == "full" and not r.baseline])
    small = best([r for r in results if r.size == "small" and not r.baseline])
    baseline = next((r for r in results if r.size == "small" and r.baseline), None)
    picked = [("best full size", full), ("best smaller", small), ("smaller, random init", baseline)]
    return [(title, r) for title, r in picked if r is not None]


def _valid_split(config: SweepConfig, out: Path):
    if config.data:
        folder = Path(config.data)
    elif config.generate is not None:
        folder = SweepLayout(out).data(config.generate.domain)
    else:
        return None
    return open_dataset(folder).valid if folder.exists() else None


def _model_folder(out: Path, config: SweepConfig, name: str) -> Path | None:
    runs = (SweepLayout(out).model(name, seed) for seed in config.seeds)
    return next((m for m in runs if (m / "config.json").is_file()), None)


def predictions_figure(config: SweepConfig, results: list[Result], out: str | Path, *,
                       images: int = 4) -> Path | None:
    """Write ``figures/predictions.png``; ``None`` when the data or the models are not on this machine.

    Each model draws its k most confident detections, k = the image's number of true boxes, with their scores:
    models compared early in training are rarely confident enough for a fixed threshold to show anything, while
    what they rank first shows how far each has got."""
    out = Path(out)
    split = _valid_split(config, out)
    columns = [(title, r, _model_folder(out, config, r.name)) for title, r in telling_models(config, results)]
    columns = [c for c in columns if c[2] is not None]
    if split is None or not len(split) or not columns:
        return None
    chosen = split.images[:images]
    names = None
    panels: list[list[torch.Tensor]] = [[] for _ in chosen]
    for _, _, folder in columns:
        model_config, processor, detector = load_for_inference(folder)
        names = [model_config.id2label.get(i, str(i)) for i in range(model_config.num_labels)]
        for row, info in enumerate(chosen):
            top = max(1, len(split.boxes.get(info["id"], [])))
            panels[row].append(detect_and_draw(processor, detector, load_image(info["file"]), names, top=top)[0])
    for row, info in enumerate(chosen):  # the ground truth goes first
        found = split.boxes.get(info["id"], [])
        xywh = torch.tensor([b for _, b in found], dtype=torch.float32).reshape(-1, 4)
        xyxy = torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], dim=1)
        panels[row].insert(0, draw_boxes(load_image(info["file"]), xyxy, [c for c, _ in found], names))
    titles = ["ground truth"] + [f"{title}: {r.name}" for title, r, _ in columns]
    fig, axes = plt.subplots(len(chosen), len(titles), figsize=(3.2 * len(titles), 3.2 * len(chosen)), squeeze=False)
    for row, tiles in enumerate(panels):
        for col, tile in enumerate(tiles):
            ax = axes[row][col]
            ax.imshow(tile.permute(1, 2, 0).numpy())
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(titles[col], fontsize=9)
    fig.suptitle("Each model's k most confident detections, k = the number of true boxes (first seed of each "
                 "experiment)")
    fig.tight_layout()
    path = SweepLayout(out).figures / "predictions.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
