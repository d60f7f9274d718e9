"""Run a sweep: prepare each experiment's starting model, fine-tune it for every seed, report.

Runs are independent folders (``runs/<experiment>/seed<k>``): a finished run (``summary.json``) is
skipped, an interrupted one resumes from its checkpoint, and ``--only`` runs a single experiment so
a cluster can spread them over machines before ``interprune report`` joins them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..data import DetectionData, open_dataset
from ..data.domains import write_domain
from ..errors import InterpruneError
from ..shrink import build_model, load_config, load_model, save, shrink, target_config
from ..train.run import train
from .config import Experiment, SweepConfig

__all__ = ["check_sweep", "run_sweep", "prepare_model"]


def check_sweep(config: SweepConfig, only: str | None = None) -> None:
    """Everything that can fail before training: names, data, the source, the small model's shapes."""
    if only and only not in {e.name for e in config.experiments}:
        raise InterpruneError(f"--only {only!r}: no such experiment; have: {', '.join(e.name for e in config.experiments)}")
    if not config.data and not config.generate:
        raise InterpruneError("the sweep names no data: set 'data:' in the YAML or pass --data DIR")
    for experiment in config.experiments:
        if experiment.calibration not in (None, "data") and not Path(experiment.calibration).exists():
            raise InterpruneError(f"experiment {experiment.name}: calibration data {experiment.calibration} does not "
                                  f"exist; give a dataset or image folder, a text file, or 'data' (the sweep's own)")
    source = load_config(config.source)
    try:
        build_model(target_config(source, config.target))
    except InterpruneError as err:
        raise InterpruneError(f"target: {err}") from None


def prepare_data(config: SweepConfig, out: Path) -> DetectionData:
    if config.data:
        return open_dataset(config.data)
    spec = config.generate
    assert spec is not None
    folder = out / "data" / spec.domain
    if not folder.exists():
        write_domain(spec.domain, folder, train=spec.train, valid=spec.valid, copies=spec.copies, size=spec.size,
                     seed=spec.seed)
    return open_dataset(folder)


def prepare_model(config: SweepConfig, experiment: Experiment, seed: int, folder: Path, source: Any,
                  data: DetectionData | None = None) -> Path | str:
    """The starting point of one run, as a model folder (the source itself for ``pretrained``).
    ``calibration: data`` calibrates on the sweep's own training images (``data``)."""
    if experiment.init == "pretrained":
        return config.source
    if folder.exists():
        return folder
    # "transfer" is a same-size shrink: the whole state dict, buffers included. "random" keeps only what
    # ``keep`` names (the backbone) and leaves every other tensor freshly initialised: the paper's random init.
    overrides = {} if experiment.size == "full" else config.target
    method = "select" if experiment.init == "transfer" else experiment.init
    reinit = f"^(?!{config.keep})" if experiment.init == "random" else None
    options = experiment.shrink_options()
    if options["calibration"] == "data" and data is not None:
        options["calibration"] = data.train.root
    model, report = shrink(source, overrides, method, seed=seed, reinit=reinit, **options)
    report.source = config.source
    save(model, folder, report=report, source=config.source)
    return folder


def run_sweep(config: SweepConfig, out: str | Path, *, only: str | None = None, progress: bool = True) -> list[Path]:
    """Run every (experiment, seed) not yet finished; return the run folders that now have summaries."""
    out = Path(out)
    check_sweep(config, only)
    out.mkdir(parents=True, exist_ok=True)
    (out / "sweep.json").write_text(json.dumps(config.model_dump(), indent=1))
    data = prepare_data(config, out)
    source = None
    done = []
    for experiment in config.experiments:
        if only and experiment.name != only:
            continue
        for seed in config.seeds:
            run = out / "runs" / experiment.name / f"seed{seed}"
            if (run / "summary.json").is_file():
                print(f"[{experiment.name} seed {seed}] finished before: skipped")
                done.append(run)
                continue
            if source is None and experiment.init != "pretrained":
                source = load_model(config.source)
            start = prepare_model(config, experiment, seed, out / "models" / f"{experiment.name}-seed{seed}", source,
                                  data)
            print(f"[{experiment.name} seed {seed}] {experiment.size} model, init {experiment.init}: training "
                  f"{config.train.steps} steps -> {run}")
            settings = config.train.model_copy(update={"seed": seed})
            train(start, data, run, settings, resume=run.exists(), progress=progress)
            done.append(run)
    return done
