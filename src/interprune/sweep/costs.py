"""What each experiment's model costs to deploy: ``interprune bench`` on every experiment's fine-tuned model.

One measurement per architecture: experiments whose models differ only in their weights (every
initialisation of the same size) share it, so the report never shows timing noise as a difference
between methods. The architectures are measured in three interleaved rounds and each keeps its fastest
round, so that a burst of other work on the machine cannot reorder them. Written to ``results/bench/<experiment>.json``; a sweep spread over machines with
``--only`` measures each experiment where it ran.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..atomic import write_text
from ..bench import BenchResult, bench
from ..hf.config import NOT_ARCHITECTURE
from .config import SweepConfig
from .results import SweepLayout, read_bench

__all__ = ["bench_experiments", "architecture_key"]

ROUNDS = 3


def architecture_key(model: Path) -> str:
    """The model's config without what does not change its computation (names, dtype, versions)."""
    config = json.loads((model / "config.json").read_text())
    return json.dumps({k: v for k, v in config.items() if k not in NOT_ARCHITECTURE}, sort_keys=True)


def _finished_model(layout: SweepLayout, config: SweepConfig, name: str) -> Path | None:
    runs = (layout.run(name, seed) for seed in config.seeds)
    return next((r / "model" for r in runs if (r / "summary.json").is_file() and (r / "model").is_dir()), None)


def bench_experiments(config: SweepConfig, out: str | Path, *, only: str | None = None,
                      device: str | None = None) -> dict[str, BenchResult]:
    """Measure every experiment (or ``only``) that has a finished run and no measurement yet."""
    layout = SweepLayout(Path(out))
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    models = {e.name: _finished_model(layout, config, e.name) for e in config.experiments}
    models = {name: model for name, model in models.items() if model is not None}
    measured: dict[str, BenchResult] = {}  # architecture -> costs, earlier measurements first
    for name, model in models.items():
        earlier = read_bench(layout.bench(name))
        if earlier is not None:
            measured.setdefault(architecture_key(model), earlier)
    wanted = {}  # architecture -> (experiment, model) still to measure
    for name, model in models.items():
        key = architecture_key(model)
        if key not in measured and not (only and name != only):
            wanted.setdefault(key, (name, model))
    _measure(wanted, measured, device)
    results = {}
    for name, model in models.items():
        key = architecture_key(model)
        if key not in measured:
            continue
        results[name] = measured[key]
        path = layout.bench(name)
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            write_text(path, json.dumps(measured[key].to_dict(), indent=1))
    return results


def _measure(wanted: dict[str, tuple[str, Path]], measured: dict[str, BenchResult], device: str) -> None:
    """Bench each wanted architecture ``ROUNDS`` times, interleaved, keeping the fastest round of each."""
    cpu = device == "cpu"
    for key, (name, model) in wanted.items():
        print(f"[bench] {name}: measuring its model on {device} ({ROUNDS} rounds, interleaved with the other sizes)")
    for _ in range(ROUNDS):  # the fastest round of each is kept: load from elsewhere hits all alike
        for key, (name, model) in wanted.items():
            # on a CPU: CPU time on one thread, the cost of one dedicated core
            result = bench(model, device=device, batch=4, warmup=2, repeat=10, budget_s=5.0, memory=not cpu,
                           clock="cpu" if cpu else "wall", threads=1 if cpu else None)
            if key not in measured or result.latency_ms < measured[key].latency_ms:
                measured[key] = result
