"""The paper's figures and a few more, from a sweep's results (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ..bench import BenchResult  # noqa: E402
from .results import Result, mean_std  # noqa: E402


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


def _latency_label(bench: BenchResult) -> str:
    kind = "CPU time" if bench.clock == "cpu" else "latency"
    return f"{kind} per input, batch 1 (ms, {bench.device})"


def _tradeoff(results: list[Result], path: Path) -> Path:
    """Quality (mAP@50, validation loss) against latency: the choice a user makes. Experiments of one
    architecture share a latency, so their names are stacked beside the points to stay readable."""
    measured = [r for r in results if r.bench]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, key, label in ((axes[0], "map_50", "mAP@50 (higher is better)"),
                           (axes[1], "final_val_loss", "final validation loss (lower is better)")):
        placed: dict[float, int] = {}
        for r in measured:
            mean, std = mean_std(r.values(key))
            if mean is None:
                continue
            x = r.bench.latency_ms
            colour = "#4C72B0" if r.size == "full" else "#DD8452"
            ax.errorbar([x], [mean], yerr=[std or 0], fmt="o", color=colour, capsize=3)
            nth = placed.get(x, 0)
            placed[x] = nth + 1
            ax.annotate(r.name, (x, mean), xytext=(6, 4 - 9 * (nth % 2)), textcoords="offset points", fontsize=7)
        ax.set_xlabel(_latency_label(measured[0].bench) if measured else "latency (ms)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    fig.suptitle("Quality against latency (blue: full size, orange: smaller; bars: seed std)")
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
    if any(r.bench for r in results):
        out.append(("Quality against latency", _tradeoff(results, folder / "quality_vs_latency.png")))
    return out
