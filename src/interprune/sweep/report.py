"""Join a sweep's run folders into ``summary.csv``, figures, ``report.md`` and ``report.html``.

Works on whatever runs exist, so experiments spread over machines (``--only``) can be joined later.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import statistics
from html import escape
from pathlib import Path

from ..atomic import write_text
from .config import SweepConfig
from .figures import draw_figures
from .pictures import predictions_figure
from .results import Result, SweepLayout, collect, mean_std

__all__ = ["write_report", "table_rows", "steps_to_reach"]

PAPER_PARAMETERS = [("(1)-(3) full DETR-R50", 41_288_719), ("(4)-(8) half-width transformer", 28_128_975)]


def steps_to_reach(curve: list[tuple[int, float]], level: float) -> int | None:
    """The first validated step at which the validation loss is at or below ``level``."""
    return next((step for step, loss in curve if loss <= level), None)


def _fmt(value: float | None, std: float | None = None, digits: int = 3) -> str:
    """``mean ± std``; a single seed has no spread to show, so its std is ``None`` and left out."""
    if value is None:
        return "-"
    return f"{value:.{digits}f}" + (f" ± {std:.{digits}f}" if std is not None else "")


def table_rows(config: SweepConfig, results: list[Result]) -> list[dict[str, str]]:
    by_name = {r.name: r for r in results}
    rows = []
    for r in results:
        baseline = config.baseline_for(next(e for e in config.experiments if e.name == r.name))
        base = by_name.get(baseline.name) if baseline else None
        level = mean_std(base.values("final_val_loss"))[0] if base else None
        reached = [steps_to_reach(c, level) for c in r.curves] if level is not None else []
        hits = [s for s in reached if s is not None]
        to_base = "-" if level is None else (f"{statistics.fmean(hits):.0f} ({len(hits)}/{len(reached)} seeds)"
                                             if hits else f"never (0/{len(reached)})")
        row = {"experiment": r.name, "size": r.size, "init": r.init,
               "parameters": f"{int(r.values('parameters')[0]):,}", "seeds": str(len(r.summaries))}
        for key, label in (("final_val_loss", "final val loss"), ("best_val_loss", "best val loss"),
                           ("map", "mAP"), ("map_50", "mAP@50")):
            row[label] = _fmt(*mean_std(r.values(key)))
        row["train seconds"] = _fmt(*mean_std(r.values("seconds")), digits=0)
        row["latency ms"] = f"{r.bench.latency_ms:.1f}" if r.bench else "-"
        row["file MB"] = f"{r.bench.file_mb:.1f}" if r.bench and r.bench.file_mb is not None else "-"
        if any("onnxruntime" in other.runtimes for other in results):
            ort = r.runtimes.get("onnxruntime")
            row["ONNX Runtime ms"] = f"{ort.latency_ms:.1f}" if ort else "-"
        row.update(pipeline_cost(config, r, by_name))
        row["steps to baseline's final loss"] = to_base
        rows.append(row)
    return rows


def pipeline_cost(config: SweepConfig, result: Result, by_name: dict[str, Result]) -> dict[str, str]:
    """The whole cost of a result: its own steps and seconds plus those of every run it started from or
    learnt from (a distilled student needs its teacher fine-tuned first), and the teacher's forward time per
    student step (already inside the student's seconds)."""
    experiment = config.experiment(result.name)
    steps, seconds = mean_std(result.values("steps"))[0], mean_std(result.values("seconds"))[0]
    for up in config.upstream(experiment):
        done = by_name.get(up.name)
        if done is None or steps is None or seconds is None:
            steps = seconds = None  # an upstream run is missing: the total is unknown, not smaller
            break
        steps += mean_std(done.values("steps"))[0] or 0
        seconds += mean_std(done.values("seconds"))[0] or 0
    per_step = [s.teacher.seconds_per_step for s in result.summaries
                if s.teacher is not None and s.teacher.seconds_per_step is not None]
    return {"pipeline steps": "-" if steps is None else f"{steps:.0f}",
            "pipeline seconds": _fmt(seconds, digits=0),
            "teacher s/step": _fmt(*mean_std(per_step)) if per_step else "-"}


def write_report(out: str | Path, collected: tuple[SweepConfig, list[Result]] | None = None) -> Path:
    """Write ``summary.csv``, the figures, ``report.md`` and ``report.html``; return the Markdown path.
    ``collected`` is ``collect(out)`` when the caller has read it already."""
    out = Path(out)
    layout = SweepLayout(out)
    config, results = collected or collect(out)
    rows = table_rows(config, results)
    table = io.StringIO()
    writer = csv.DictWriter(table, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    write_text(layout.summary_csv, table.getvalue())
    figures = draw_figures(results, layout.figures)
    pictures = predictions_figure(config, results, out)
    if pictures is not None:
        figures.append(("Predictions on validation images", pictures))
    md = _markdown(config, rows, figures, out, results)
    write_text(layout.report_md, md)
    write_text(layout.report_html, _html(config, rows, figures, results))
    return layout.report_md


def _md_table(rows: list[dict[str, str]]) -> str:
    head = list(rows[0])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r[h] for h in head) + " |" for r in rows]
    return "\n".join(lines)


def _markdown(config: SweepConfig, rows: list[dict[str, str]], figures: list[tuple[str, Path]], out: Path,
              results: list[Result]) -> str:
    paper = "\n".join(f"| {name} | {count:,} |" for name, count in PAPER_PARAMETERS)
    parts = [
        f"# {config.name}: which way of initialising the smaller model works best?",
        f"Source `{config.source}`, small model `{json.dumps(config.target)}`, {config.train.steps} steps, "
        f"seeds {config.seeds}. Mean ± standard deviation over seeds. *Steps to baseline's final loss*: the first "
        "validated step at which a run's validation loss is at or below the final validation loss of the random-init "
        "model of its size (lower is faster; the paper's claim is that interpolated weights train faster). "
        "*Pipeline steps/seconds*: the run's own plus those of every run it started from (`from:`) or learnt from "
        "(`teacher:`), so a distilled student is charged for its teacher's fine-tuning; *teacher s/step*: the "
        "teacher's forward time per student step, part of the run's own seconds. "
        + _cost_note(results),
        _md_table(rows),
        "## The paper's parameter counts\n\n| models | parameters |\n|---|---|\n" + paper,
        "## Figures",
        *[f"### {title}\n\n![{title}]({path.relative_to(out)})" for title, path in figures],
    ]
    return "\n\n".join(parts) + "\n"


def _cost_note(results: list[Result]) -> str:
    measured = next((r.bench for r in results if r.bench), None)
    if measured is None:
        return ""
    kind = "CPU time" if measured.clock == "cpu" else "time"
    ort = next((r.runtimes["onnxruntime"] for r in results if "onnxruntime" in r.runtimes), None)
    also = (f" *ONNX Runtime ms*: the same in ONNX Runtime on {ort.device}, after `interprune export` (checked "
            "against PyTorch).") if ort else ""
    return (f"*Latency*: median {kind} for one input ({measured.inputs}) at batch 1 on {measured.device}, "
            "`interprune bench` on the fine-tuned model; *file MB*: its weights on disk." + also)


def _html(config: SweepConfig, rows: list[dict[str, str]], figures: list[tuple[str, Path]],
          results: list[Result]) -> str:
    """The report as one self-contained page. Every text that comes from the user (the sweep's name, source,
    overrides, experiment names) is escaped: a name with ``<`` or ``&`` must show as written, not as markup."""
    head = "".join(f"<th>{escape(str(h))}</th>" for h in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{escape(str(v))}</td>" for v in r.values()) + "</tr>" for r in rows)
    images = "".join(
        f"<h3>{escape(title)}</h3><img alt='{escape(title)}' "
        f"src='data:image/png;base64,{base64.b64encode(path.read_bytes()).decode()}'>"
        for title, path in figures)
    name = escape(config.name)
    return (f"<!doctype html><meta charset='utf-8'><title>{name}</title>"
            "<style>body{font-family:sans-serif;max-width:1100px;margin:auto}table{border-collapse:collapse}"
            "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}img{max-width:100%}</style>"
            f"<h1>{name}</h1><p>Source <code>{escape(str(config.source))}</code>, small model "
            f"<code>{escape(json.dumps(config.target))}</code>, {config.train.steps} steps, seeds {config.seeds}. "
            f"{escape(_cost_note(results))}</p>"
            f"<table><tr>{head}</tr>{body}</table>{images}")
