"""What a sweep leaves behind: the layout of its folder and its results, typed.

``SweepLayout`` owns every path under a sweep's ``--out`` (runs, starting models, data, bench files,
figures, reports); ``Result`` holds all seeds of one experiment with its measured deployment costs as a
``BenchResult``. The sweep writes through the layout, and the report, figures and pictures read through it.
"""

from __future__ import annotations

import json
import statistics
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path

from ..bench import RUNTIMES, BenchResult
from ..errors import InterpruneError
from ..train.metrics import read_metrics
from ..train.summary import RunSummary, UnreadableSummary
from .config import SweepConfig

__all__ = ["SweepLayout", "Result", "mean_std", "read_bench", "collect"]



@dataclass(frozen=True)
class SweepLayout:
    """Every path of a sweep folder, in one place."""

    out: Path

    @property
    def config(self) -> Path:
        return self.out / "sweep.json"

    def run(self, name: str, seed: int) -> Path:
        """A run folder, as ``interprune train`` writes it."""
        return self.out / "runs" / name / f"seed{seed}"

    def model(self, name: str, seed: int) -> Path:
        """The fine-tuned model of a run."""
        return self.run(name, seed) / "model"

    def start(self, name: str, seed: int) -> Path:
        """The starting model of a run, before fine-tuning."""
        return self.out / "models" / f"{name}-seed{seed}"

    @property
    def latency_cache(self) -> Path:
        """Latencies the budget search measured (``budget.LatencyCache``), shared by the sweep's runs."""
        return self.out / "models" / "latency.json"

    def data(self, domain: str) -> Path:
        """A generated dataset."""
        return self.out / "data" / domain

    def bench(self, name: str, runtime: str = "torch") -> Path:
        """An experiment's measured deployment costs in one runtime (eager PyTorch keeps the plain name)."""
        return self.out / "bench" / (f"{name}.json" if runtime == "torch" else f"{name}.{runtime}.json")

    @property
    def logs(self) -> Path:
        """What launched runs print (``sweep --launcher``), one file per run."""
        return self.out / "logs"

    def log(self, name: str, seed: int) -> Path:
        return self.logs / f"{name}-seed{seed}.log"

    def lock(self, name: str, seed: int) -> Path:
        """The run's writer lock (``sweep.locks``), beside ``runs/`` so no reader mistakes it for a run."""
        return self.out / "locks" / f"{name}-seed{seed}.lock"

    @property
    def figures(self) -> Path:
        return self.out / "figures"

    @property
    def summary_csv(self) -> Path:
        return self.out / "summary.csv"

    @property
    def report_md(self) -> Path:
        return self.out / "report.md"

    @property
    def report_html(self) -> Path:
        return self.out / "report.html"


@dataclass
class Result:
    """All seeds of one experiment."""

    name: str
    size: str
    init: str
    summaries: list[RunSummary] = field(default_factory=list)
    curves: list[list[tuple[int, float]]] = field(default_factory=list)  # (step, validation loss) per seed
    bench: BenchResult | None = None  # its model's deployment costs ('interprune bench'), when measured
    runtimes: dict[str, BenchResult] = field(default_factory=dict)  # runtime -> costs; bench is the torch one

    @property
    def baseline(self) -> bool:
        """The paper's random initialisation: what "trains faster" is measured against."""
        return self.init == "scratch"

    def values(self, key: str) -> list[float]:
        return [float(getattr(s, key)) for s in self.summaries if getattr(s, key) is not None]


def mean_std(values: list[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation; the deviation is ``None`` for fewer than two values."""
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def read_bench(path: Path) -> BenchResult | None:
    """A bench file as written by the sweep (``BenchResult.to_dict``); ``None`` when there is none."""
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    return BenchResult(**{f.name: data[f.name] for f in fields(BenchResult) if f.name in data})


def _curve(run: Path) -> list[tuple[int, float]]:
    seen: dict[int, float] = {}
    for row in read_metrics(run):
        if "val_loss" in row:
            seen.setdefault(int(row["step"]), row["val_loss"])  # logged at the steps done; 0 before training
    return sorted(seen.items())


def collect(out: str | Path) -> tuple[SweepConfig, list[Result]]:
    """The sweep's config and the results of every experiment with at least one finished run."""
    layout = SweepLayout(Path(out))
    try:
        config = SweepConfig.model_validate(json.loads(layout.config.read_text()))
    except (OSError, ValueError):
        raise InterpruneError(f"{out} is not a sweep folder (no readable sweep.json); run 'interprune sweep' first") from None
    results = []
    for experiment in config.experiments:
        result = Result(experiment.name, experiment.size, experiment.init)
        for seed in config.seeds:
            run = layout.run(experiment.name, seed)
            try:
                summary = RunSummary.find(run)
            except UnreadableSummary as err:  # one line, and the report is made of the readable runs
                print(f"interprune: warning: {err}; left out (run 'interprune sweep' again to redo it)", file=sys.stderr)
                continue
            if summary is not None:
                result.summaries.append(summary)
                result.curves.append(_curve(run))
        for runtime in RUNTIMES:
            cost = read_bench(layout.bench(experiment.name, runtime))
            if cost is not None:
                result.runtimes[runtime] = cost
        result.bench = result.runtimes.get("torch")
        if result.summaries:
            results.append(result)
    if not results:
        raise InterpruneError(f"{out} has no finished runs yet; run 'interprune sweep' first")
    return config, results
