"""What each experiment's model costs to deploy: ``interprune bench`` on every experiment's fine-tuned model.

One measurement per architecture: experiments whose models differ only in their weights (every
initialisation of the same size) share it, so the report never shows timing noise as a difference
between methods. The architectures are measured in three interleaved rounds and each keeps its fastest
round, so that a burst of other work on the machine cannot reorder them. Written to ``results/bench/<experiment>.json``; a sweep spread over machines with
``--only`` measures each experiment where it ran. With ``bench: {runtimes: [torch, onnxruntime]}`` each model is
also exported (``interprune export``, checked) once and measured in ONNX Runtime, written to
``results/bench/<experiment>.onnxruntime.json``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import tempfile
from pathlib import Path

import torch

from ..atomic import write_text
from ..bench import BenchResult
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
                      device: str | None = None) -> dict[str, dict[str, BenchResult]]:
    """Measure every experiment (or ``only``) that has a finished run and no measurement yet, in each of the
    sweep's runtimes; returns runtime -> experiment -> costs."""
    layout = SweepLayout(Path(out))
    models = {e.name: _finished_model(layout, config, e.name) for e in config.experiments}
    keyed = {name: (model, architecture_key(model)) for name, model in models.items() if model is not None}
    return {runtime: _bench_runtime(layout, keyed, runtime, only, device) for runtime in config.runtimes}


def _bench_runtime(layout: SweepLayout, keyed: dict[str, tuple[Path, str]], runtime: str, only: str | None,
                   device: str | None) -> dict[str, BenchResult]:
    """``keyed``: experiment -> (its finished model, its architecture key); one measurement per architecture."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    measured: dict[str, BenchResult] = {}  # architecture -> costs, earlier measurements first
    for name, (model, key) in keyed.items():
        earlier = read_bench(layout.bench(name, runtime))
        if earlier is not None:
            measured.setdefault(key, earlier)
    wanted = {}  # architecture -> (experiment, model) still to measure
    for name, (model, key) in keyed.items():
        if key not in measured and not (only and name != only):
            wanted.setdefault(key, (name, model))
    _measure(wanted, measured, runtime, device)
    results = {}
    for name, (model, key) in keyed.items():
        if key not in measured:
            continue
        results[name] = measured[key]
        path = layout.bench(name, runtime)
        if not path.is_file():
            write_text(path, json.dumps(measured[key].to_dict(), indent=1))  # write_text makes the folder
    return results


def _measure(wanted: dict[str, tuple[str, Path]], measured: dict[str, BenchResult], runtime: str,
             device: str) -> None:
    """Bench each wanted architecture ``ROUNDS`` times, interleaved, keeping the fastest round of each. For ONNX
    Runtime each model is exported and checked once, into a temporary folder, before the rounds."""
    if runtime == "onnxruntime" and device != "cpu":
        from ..deploy.runtime import require_onnx

        if "CUDAExecutionProvider" not in require_onnx()[1].get_available_providers():
            device = "cpu"  # the plain onnxruntime package: its CPU is the deployment it can tell about
    from ..deploy.ortbench import bench_runtime

    cpu = device == "cpu"
    where = f"{device}, {'ONNX Runtime' if runtime == 'onnxruntime' else 'eager PyTorch'}"
    for key, (name, model) in wanted.items():
        print(f"[bench] {name}: measuring its model on {where} ({ROUNDS} rounds, interleaved with the other sizes)")
    with contextlib.ExitStack() as stack:
        targets = dict(wanted)
        if runtime == "onnxruntime" and wanted:
            from ..deploy.export import export_onnx

            folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="interprune-bench-")))
            for key, (name, model) in wanted.items():
                export_onnx(model, folder / name)
                targets[key] = (name, folder / name)
        for _ in range(ROUNDS):  # the fastest round of each is kept: load from elsewhere hits all alike
            for key, (name, target) in targets.items():
                # on a CPU: CPU time on one thread, the cost of one dedicated core
                result = bench_runtime(target, runtime, device=device, batch=4, warmup=2, repeat=10, budget_s=5.0,
                                       memory=not cpu, clock="cpu" if cpu else "wall", threads=1 if cpu else None)
                result = dataclasses.replace(result, model=str(wanted[key][1]))
                if key not in measured or result.latency_ms < measured[key].latency_ms:
                    measured[key] = result


