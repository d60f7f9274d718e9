"""Join a sweep's run folders into ``summary.csv``, figures, ``report.md`` and ``report.html``.

Works on whatever runs exist, so experiments spread over machines (``--only``) can be joined later.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ..atomic import write_text
from ..errors import InterpruneError
from ..train.metrics import read_metrics
from ..train.summary import RunSummary, UnreadableSummary
from .config import SweepConfig
from .costs import RUNTIMES, bench_file

__all__ = ["collect", "write_report", "steps_to_reach"]

PAPER_PARAMETERS = [("(1)-(3) full DETR-R50", 41_288_719), ("(4)-(8) half-width transformer", 28_128_975)]


@dataclass
class Result:
    """All seeds of one experiment."""

    name: str
    size: str
    init: str
    summaries: list[RunSummary] = field(default_factory=list)
    curves: list[list[tuple[int, float]]] = field(default_factory=list)  # (step, validation loss) per seed
    bench: dict | None = None  # its model's deployment costs ('interprune bench'), when measured
    runtimes: dict[str, dict] = field(default_factory=dict)  # runtime -> costs (bench is the torch one)

    def values(self, key: str) -> list[float]:
        return [float(getattr(s, key)) for s in self.summaries if getattr(s, key) is not None]


def mean_std(values: list[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation; the deviation is ``None`` for fewer than two values."""
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def _curve(run: Path) -> list[tuple[int, float]]:
    seen: dict[int, float] = {}
    for row in read_metrics(run):
        if "val_loss" in row:
            seen.setdefault(int(row["step"]), row["val_loss"])  # logged at the steps done; 0 before training
    return sorted(seen.items())


def steps_to_reach(curve: list[tuple[int, float]], level: float) -> int | None:
    """The first validated step at which the validation loss is at or below ``level``."""
    return next((step for step, loss in curve if loss <= level), None)


def collect(out: str | Path) -> tuple[SweepConfig, list[Result]]:
    out = Path(out)
    try:
        config = SweepConfig.model_validate(json.loads((out / "sweep.json").read_text()))
    except (OSError, ValueError):
        raise InterpruneError(f"{out} is not a sweep folder (no readable sweep.json); run 'interprune sweep' first") from None
    results = []
    for experiment in config.experiments:
        result = Result(experiment.name, experiment.size, experiment.init)
        for seed in config.seeds:
            run = out / "runs" / experiment.name / f"seed{seed}"
            try:
                summary = RunSummary.find(run)
            except UnreadableSummary as err:  # one line, and the report is made of the readable runs
                print(f"interprune: warning: {err}; left out (run 'interprune sweep' again to redo it)", file=sys.stderr)
                continue
            if summary is not None:
                result.summaries.append(summary)
                result.curves.append(_curve(run))
        for runtime in RUNTIMES:
            cost = bench_file(out, experiment.name, runtime)
            if cost.is_file():
                result.runtimes[runtime] = json.loads(cost.read_text())
        result.bench = result.runtimes.get("torch")
        if result.summaries:
            results.append(result)
    if not results:
        raise InterpruneError(f"{out} has no finished runs yet; run 'interprune sweep' first")
    return config, results


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
        row["latency ms"] = f"{r.bench['latency_ms']:.1f}" if r.bench else "-"
        row["file MB"] = f"{r.bench['file_mb']:.1f}" if r.bench and r.bench.get("file_mb") is not None else "-"
        if any("onnxruntime" in other.runtimes for other in results):
            ort = r.runtimes.get("onnxruntime")
            row["ONNX Runtime ms"] = f"{ort['latency_ms']:.1f}" if ort else "-"
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


def write_report(out: str | Path) -> Path:
    """Write ``summary.csv``, the figures, ``report.md`` and ``report.html``; return the Markdown path."""
    from .figures import draw_figures
    from .pictures import predictions_figure

    out = Path(out)
    config, results = collect(out)
    rows = table_rows(config, results)
    table = io.StringIO()
    writer = csv.DictWriter(table, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    write_text(out / "summary.csv", table.getvalue())
    figures = draw_figures(results, out / "figures")
    pictures = predictions_figure(config, results, out)
    if pictures is not None:
        figures.append(("Predictions on validation images", pictures))
    md = _markdown(config, rows, figures, out, results)
    write_text(out / "report.md", md)
    write_text(out / "report.html", _html(config, rows, figures, results))
    return out / "report.md"


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
    kind = "CPU time" if measured.get("clock") == "cpu" else "time"
    ort = next((r.runtimes["onnxruntime"] for r in results if "onnxruntime" in r.runtimes), None)
    also = (f" *ONNX Runtime ms*: the same in ONNX Runtime on {ort['device']}, after `interprune export` (checked "
            "against PyTorch).") if ort else ""
    return (f"*Latency*: median {kind} for one input ({measured['inputs']}) at batch 1 on {measured['device']}, "
            "`interprune bench` on the fine-tuned model; *file MB*: its weights on disk." + also)


def _html(config: SweepConfig, rows: list[dict[str, str]], figures: list[tuple[str, Path]],
          results: list[Result]) -> str:
    head = "".join(f"<th>{h}</th>" for h in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{v}</td>" for v in r.values()) + "</tr>" for r in rows)
    images = "".join(
        f"<h3>{title}</h3><img alt='{title}' src='data:image/png;base64,{base64.b64encode(path.read_bytes()).decode()}'>"
        for title, path in figures)
    return (f"<!doctype html><meta charset='utf-8'><title>{config.name}</title>"
            "<style>body{font-family:sans-serif;max-width:1100px;margin:auto}table{border-collapse:collapse}"
            "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}img{max-width:100%}</style>"
            f"<h1>{config.name}</h1><p>Source <code>{config.source}</code>, small model "
            f"<code>{json.dumps(config.target)}</code>, {config.train.steps} steps, seeds {config.seeds}. "
            f"{_cost_note(results)}</p>"
            f"<table><tr>{head}</tr>{body}</table>{images}")
