"""What a search leaves behind: the candidate table (CSV), a figure of quality against cost, a summary."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from .search import Candidate, SearchResult
from .spec import format_value

__all__ = ["table_csv", "draw", "describe", "write_outputs"]


def _row(c: Candidate, knobs: list[str]) -> list:
    return ([c.fractions.get(k, 1.0) for k in knobs] + [c.params, c.flops,
            "" if c.latency_ms is None else round(c.latency_ms, 3), "" if c.fits is None else c.fits,
            "" if c.error is None else round(c.error, 5), c.chosen,
            " ".join(f"{k}={v}" for k, v in c.overrides.items())])


def table_csv(result: SearchResult) -> str:
    knobs = sorted({k for c in result.candidates for k in c.fractions})
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(knobs + ["params", "flops", "latency_ms", "fits", "output_error", "chosen", "overrides"])
    writer.writerow(_row(result.source, knobs)[:-1] + ["(source)"])
    for c in sorted(result.candidates, key=lambda c: -c.params):
        writer.writerow(_row(c, knobs))
    return out.getvalue()


def draw(result: SearchResult, path: Path) -> Path:
    """Left: every candidate whose cost is known, parameters kept against the first budget's cost, coloured by
    whether it fits. Right (when scored): quality (1 - output error after the shrink) of the top-k against cost."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kind = result.budgets[0].kind
    label = {"params": "parameters", "flops": "FLOPs per input", "latency": "latency (ms)"}[kind]
    scored = [c for c in result.candidates if c.error is not None]
    fig, axes = plt.subplots(1, 2 if scored else 1, figsize=(11 if scored else 6.4, 4.2), squeeze=False)
    ax = axes[0][0]
    for fits, colour, name in ((True, "#55A868", "fits"), (False, "#C44E52", "over budget")):
        group = [c for c in result.candidates if bool(c.fits) == fits and c.cost(kind) is not None]
        ax.scatter([c.cost(kind) for c in group], [c.params / result.source.params for c in group], s=16, c=colour,
                   label=name)
    ax.scatter([result.best.cost(kind)], [result.best.params / result.source.params], marker="*", s=200,
               c="#DD8452", label="chosen", zorder=3)
    ax.axvline(result.limits[kind], color="k", linestyle="--", linewidth=1, label=f"budget {result.budgets[0].text}")
    ax.set(xlabel=label, ylabel="parameters kept (fraction of the source)", title="candidates")
    ax.legend(fontsize=8)
    if scored:
        ax = axes[0][1]
        ax.scatter([c.cost(kind) for c in scored], [1 - c.error for c in scored], c="#4C72B0", label="top-k, scored")
        ax.scatter([result.best.cost(kind)], [1 - result.best.error], marker="*", s=200, c="#DD8452",
                   label="chosen", zorder=3)
        ax.axvline(result.limits[kind], color="k", linestyle="--", linewidth=1)
        ax.set(xlabel=label, ylabel="1 - output error after the shrink", title="quality against cost")
        ax.legend(fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    from ..atomic import write_bytes

    return write_bytes(path, buffer.getvalue())


def describe(result: SearchResult) -> str:
    """The search in a few lines: budgets, candidates, what was measured and what was chosen."""
    s, b = result.source, result.best
    fits = sum(1 for c in result.candidates if c.fits)
    lines = [f"budget {' '.join(x.text for x in result.budgets)}: "
             + ", ".join(f"{k} <= {format_value(k, v)}" for k, v in result.limits.items()),
             f"searched {len(result.candidates)} candidates in {result.seconds:.1f} s ({result.measured} latencies "
             f"measured, {result.cache_hits} from the cache); {fits} fit"
             + (f", top {sum(c.error is not None for c in result.candidates)} scored on calibration data"
                if result.scored else ", the largest that fits chosen (no calibration data to score on)")]
    for kind in ("params", "flops", "latency"):
        if b.cost(kind) is not None and s.cost(kind):
            lines.append(f"  {kind:<8} {format_value(kind, s.cost(kind))} -> {format_value(kind, b.cost(kind))} "
                         f"({b.cost(kind) / s.cost(kind):.2f}x)")
    if b.checked is not None:
        lines.append(f"  checked against the source, interleaved: {b.checked:.2f}x its latency")
    if b.error is not None:
        lines.append(f"  output error after the shrink {b.error:.4f}")
    converted = result.settings.get("converted_backbone")
    if converted:
        lines.append(f"  the timm backbone was converted to its Hugging Face ResNet equivalent first "
                     f"({converted['copied']} tensors copied, {len(converted['refit'])} convolutions refit)")
    lines.append("chosen: " + (" ".join(f"--set {k}={v}" for k, v in b.overrides.items()) or "the source as it is"))
    return "\n".join(lines)


def write_outputs(result: SearchResult, folder: Path) -> list[Path]:
    """``budget.csv``, ``budget.json`` and ``budget.png`` in ``folder`` (each written atomically)."""
    import json

    from ..atomic import write_text

    return [write_text(folder / "budget.csv", table_csv(result)),
            write_text(folder / "budget.json", json.dumps(result.to_dict(), indent=1, default=str)),
            draw(result, folder / "budget.png")]
