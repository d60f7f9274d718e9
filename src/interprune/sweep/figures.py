"""The paper's figures and a few more, from a sweep's results (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .report import Result, mean_std  # noqa: E402


def _bars(results: list[Result], key: str, ylabel: str, title: str, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(max(6, len(results) * 0.8), 4))
    stats = [mean_std(r.values(key)) for r in results]
    colours = ["#4C72B0" if r.size == "full" else "#DD8452" for r in results]
    ax.bar(range(len(results)), [m or 0 for m, _ in stats], yerr=[s or 0 for _, s in stats], color=colours, capsize=3)
    ax.set_xticks(range(len(results)), [r.name for r in results], rotation=35, ha="right")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _curves(results: list[Result], title: str, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for index, r in enumerate(results):
        steps = sorted({s for c in r.curves for s, _ in c})
        if not steps:
            continue
        grid = np.array([[dict(c).get(s, np.nan) for s in steps] for c in r.curves], dtype=float)
        mean = np.nanmean(grid, axis=0)
        style = ["-", "--", ":", "-."][index % 4]  # identical curves (pretrained and transfer) stay visible
        line, = ax.plot(steps, mean, style, marker="o", markersize=2.5, label=f"{r.name} ({len(r.curves)} seeds)")
        if len(r.curves) > 1:
            ax.fill_between(steps, np.nanmin(grid, axis=0), np.nanmax(grid, axis=0), color=line.get_color(), alpha=0.15)
    ax.set_xlabel("training step")
    ax.set_ylabel("validation loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def draw_figures(results: list[Result], folder: Path) -> list[tuple[str, Path]]:
    """Write the PNGs; returns (title, path) pairs in the order a reader should see them."""
    folder.mkdir(parents=True, exist_ok=True)
    full = [r for r in results if r.size == "full"]
    small = [r for r in results if r.size == "small"]
    out = [("Fig. 2: training time", _bars(results, "seconds", "seconds (mean ± std)", "Time to train",
                                             folder / "fig2_training_time.png"))]
    if full:
        out.append(("Fig. 3: full-size models", _curves(full, "Full-size models (shaded: seed range)",
                                                         folder / "fig3_full_models.png")))
    if small:
        out.append(("Fig. 4: smaller models", _curves(small, "Smaller models (shaded: seed range)",
                                                       folder / "fig4_small_models.png")))
    out.append(("mAP@50 on the validation split", _bars(results, "map_50", "mAP@50 (mean ± std)",
                                                        "Detection quality after fine-tuning", folder / "map50.png")))
    return out
