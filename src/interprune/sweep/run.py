"""Run a sweep: prepare each experiment's starting model, fine-tune it for every seed, report.

Runs are independent folders (``runs/<experiment>/seed<k>``): a finished run (``summary.json``) is
skipped, an interrupted one resumes exactly from its checkpoint, and ``--only`` runs a single experiment
so a cluster can spread them over machines before ``interprune report`` joins them. A broken file found
on the way (an unreadable summary, a corrupt checkpoint) is said in one line and that run is redone
(from its checkpoint, or from scratch) without stopping the others.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from ..atomic import atomic_folder, write_text
from ..data import DetectionData, open_dataset
from ..data.domains import write_domain
from ..errors import InterpruneError
from ..hf.config import target_config
from ..hf.models import build_model, fingerprint, load_config, load_model, save
from ..train.resume import CorruptCheckpoint
from ..train.run import CHECKPOINTS, check_trainer, train
from ..train.settings import TrainSettings
from ..train.summary import SUMMARY, RunSummary, UnreadableSummary
from ..weights.shrink import shrink
from .config import Experiment, SweepConfig
from .costs import bench_experiments
from .locks import run_lock
from .progress import SweepProgress
from .results import SweepLayout

__all__ = ["check_sweep", "run_sweep", "run_one", "start_sweep", "prepare_data", "prepare_model", "settings_for",
           "finished_twins", "is_finished", "SourceCache"]


def check_sweep(config: SweepConfig, only: str | None = None, out: Path | None = None) -> None:
    """Everything that can fail before training: names, data, the source, the small model's shapes, and
    for ``--only`` the results of the experiments it starts from or learns from."""
    if only and only not in {e.name for e in config.experiments}:
        raise InterpruneError(f"--only {only!r}: no such experiment; have: {', '.join(e.name for e in config.experiments)}")
    if only and out is not None:
        experiment = config.experiment(only)
        for dep in dict.fromkeys(d for d in (experiment.from_, experiment.teacher) if d):
            missing = [s for s in config.seeds if not is_finished(SweepLayout(out).run(dep, s))]
            if missing:
                raise InterpruneError(
                    f"--only {only}: it needs {dep}'s result, which {out} does not have yet for seed(s) "
                    f"{', '.join(map(str, missing))}; run --only {dep} first (or the whole sweep)")
    if not config.data and not config.generate:
        raise InterpruneError("the sweep names no data: set 'data:' in the YAML or pass --data DIR")
    check_trainer(config.train)
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
    folder = SweepLayout(out).data(spec.domain)
    if not folder.exists():
        write_domain(spec.domain, folder, train=spec.train, valid=spec.valid, copies=spec.copies, size=spec.size,
                     seed=spec.seed)
    return open_dataset(folder)


def prepare_model(config: SweepConfig, experiment: Experiment, seed: int, folder: Path, source: Any,
                  origin: str | Path | None = None, data: DetectionData | None = None) -> Path | str:
    """The starting point of one run, as a model folder (the source itself for ``pretrained``). ``origin``
    is the model ``source`` was loaded from when it is not the sweep's source (``from:`` an experiment);
    ``calibration: data`` calibrates on the sweep's own training images (``data``)."""
    origin = str(origin or config.source)
    if experiment.init == "pretrained":
        return origin
    if folder.exists():
        return folder
    # "transfer" is a same-size shrink: the whole state dict, buffers included. "scratch" keeps only what
    # ``keep`` names (the backbone) and leaves every other tensor freshly initialised: the paper's random init.
    overrides = {} if experiment.size == "full" else config.target
    method = {"transfer": "select", "scratch": "random"}.get(experiment.init, experiment.init)
    reinit = f"^(?!{config.keep})" if experiment.init == "scratch" else None
    options = experiment.shrink_options()
    if options["calibration"] == "data" and data is not None:
        options["calibration"] = data.train.root
    if experiment.budget is not None:  # the target is what the search finds, timed as one thread's CPU time
        from ..budget import LatencyCache, parse_budget
        from ..budget.apply import shrink_to_budget
        from ..budget.output import write_outputs

        cache = LatencyCache(SweepLayout(folder.parent.parent).latency_cache)  # folder is out/models/<run>
        model, report, found = shrink_to_budget(origin, [parse_budget(experiment.budget)], {}, method, seed=seed,
                                                cache=cache, threads=1, clock="cpu", **options)
        save(model, folder, report=report, source=origin)
        write_outputs(found, folder)
        return folder
    model, report = shrink(source, overrides, method, seed=seed, reinit=reinit, **options)
    report.source = origin
    save(model, folder, report=report, source=origin)
    return folder


def run_sweep(config: SweepConfig, out: str | Path, *, only: str | None = None, progress: bool = True) -> list[Path]:
    """Run every (experiment, seed) not yet finished, one after another; return the run folders that now
    have summaries. (``sweep.launch`` spreads the same runs over a Ray cluster or Slurm.)"""
    out = Path(out)
    check_sweep(config, only, out)
    data = start_sweep(config, out)
    order = [e for e in config.ordered() if not only or e.name == only]  # each after what it starts from
    counter = SweepProgress(len(order) * len(config.seeds))
    sources = SourceCache(config)
    twins: dict[tuple[str, str], Path] = {}  # (start fingerprint, settings) -> the run that trained it
    done = []
    for experiment in order:
        for seed in config.seeds:
            with run_lock(out, experiment.name, seed):
                done.append(run_one(config, out, experiment, seed, data, sources=sources, twins=twins,
                                    counter=counter, progress=progress))
    if config.runtimes:
        bench_experiments(config, out, only=only)
    return done


def start_sweep(config: SweepConfig, out: Path) -> DetectionData:
    """The results folder with the sweep it holds (``sweep.json``), and the data, written once if generated."""
    out.mkdir(parents=True, exist_ok=True)
    write_text(SweepLayout(out).config, json.dumps(config.model_dump(), indent=1))
    return prepare_data(config, out)


class SourceCache:
    """The sweep's source model, loaded once and only when a run needs it."""

    def __init__(self, config: SweepConfig) -> None:
        self.config, self.model = config, None

    def get(self) -> Any:
        if self.model is None:
            self.model = load_model(self.config.source)
        return self.model


def run_one(config: SweepConfig, out: Path, experiment: Experiment, seed: int, data: DetectionData, *,
            sources: SourceCache, twins: dict[tuple[str, str], Path], counter: SweepProgress | None = None,
            progress: bool = True) -> Path:
    """Bring one (experiment, seed) run to its summary: skip it if finished, copy a twin's results (a
    bit-identical start with the same settings), or prepare its starting model and train it, resuming
    from its checkpoint when it has one. Every launcher calls this, so a run is the same wherever it runs."""
    layout = SweepLayout(out)
    run = layout.run(experiment.name, seed)
    tag = f"[{experiment.name} seed {seed}]"
    if _finished_before(run, tag, twins, counter):
        return run
    folder = layout.start(experiment.name, seed)
    origin = layout.model(experiment.from_, seed) if experiment.from_ else None
    # the source in memory, for the shrinks that take one (a budget's search reads it from its folder itself)
    needed = experiment.init != "pretrained" and experiment.budget is None and not folder.exists()
    start_from = None
    if needed:
        start_from = load_model(origin) if origin is not None else sources.get()
    start = prepare_model(config, experiment, seed, folder, start_from, origin, data)
    settings = settings_for(config, experiment, seed, out)
    digest = fingerprint(start)
    key = (digest, _settings_key(settings))
    if digest is not None and key in twins:  # bit-identical start, same settings: the same run
        copy_run(twins[key], run)
        print(f"{_prefix(counter, True)}{tag} starts from exactly the weights of {twins[key].parent.name} "
              f"with the same settings: its results are copied, not recomputed")
        return run
    print(f"{_prefix(counter)}{tag} {experiment.size} model, init {experiment.init}"
          f"{f' from {experiment.from_}' if experiment.from_ else ''}"
          f"{f', teacher {experiment.teacher}' if experiment.teacher else ''}: training "
          f"{settings.steps} steps -> {run}")
    _train(start, data, run, settings, tag, progress, digest)
    if digest is not None:
        twins.setdefault(key, run)
    if counter:
        counter.done()
    return run


def _prefix(counter: SweepProgress | None, skipped: bool = False) -> str:
    """``[j/n] `` when the sweep counts its runs here (serial); launchers count as runs finish instead."""
    return f"{counter.next(skipped=skipped)} " if counter else ""


def _finished_before(run: Path, tag: str, twins: dict[tuple[str, str], Path], counter: SweepProgress | None) -> bool:
    """Whether ``run`` has a readable summary already (then its start becomes a known twin)."""
    try:
        finished = RunSummary.find(run)
    except UnreadableSummary as err:
        print(f"{tag} {err}: redoing the run (from its checkpoint when it has one)")
        return False
    if finished is None:
        return False
    _register(twins, finished, run)
    print(f"{_prefix(counter, True)}{tag} finished before: skipped")
    return True


def finished_twins(config: SweepConfig, out: Path) -> dict[tuple[str, str], Path]:
    """The twins table of the runs already finished on disk: what a run started on another machine knows."""
    twins: dict[tuple[str, str], Path] = {}
    layout = SweepLayout(out)
    for experiment in config.experiments:
        for seed in config.seeds:
            run = layout.run(experiment.name, seed)
            try:
                finished = RunSummary.find(run)
            except UnreadableSummary:
                continue
            if finished is not None:
                _register(twins, finished, run)
    return twins


def _register(twins: dict[tuple[str, str], Path], finished: RunSummary, run: Path) -> None:
    """A finished run becomes the twin of any later run with its start and settings (the first one kept)."""
    if finished.start_fingerprint:
        twins.setdefault((finished.start_fingerprint, _settings_key(finished.settings)), run)


def _train(start: Path, data: DetectionData, run: Path, settings: TrainSettings, tag: str, progress: bool,
           digest: str | None) -> None:
    """Train (or resume) one run; a damaged checkpoint is set aside and the run starts again from scratch."""
    try:
        train(start, data, run, settings, resume=run.exists(), progress=progress)
    except CorruptCheckpoint as err:
        kept = set_aside(run / CHECKPOINTS / "last.ckpt")
        print(f"{tag} {err}; kept it as {kept.name} and starting this run again from scratch")
        train(start, data, run, settings, resume=True, progress=progress)
    summary = RunSummary.read(run)
    summary.start_fingerprint = digest
    summary.write(run)


def set_aside(path: Path) -> Path:
    """Rename a broken file out of the way (kept for inspection, never read again)."""
    kept = path.with_name(f"{path.name}.corrupt")
    os.replace(path, kept)
    return kept


def settings_for(config: SweepConfig, experiment: Experiment, seed: int, out: Path) -> TrainSettings:
    """The sweep's settings with this experiment's own (``train:``, steps, its teacher's model) and the seed."""
    update: dict[str, Any] = {**experiment.train, "seed": seed, "steps": config.steps_of(experiment)}
    if experiment.teacher:
        update["teacher"] = str(SweepLayout(out).model(experiment.teacher, seed))
    elif not (update.get("teacher") or config.train.teacher):
        update["distill_data"] = None  # unlabelled images only serve experiments that have a teacher
    return config.train.model_copy(update=update)


def is_finished(run: Path) -> bool:
    """The run has a readable summary."""
    try:
        return RunSummary.find(run) is not None
    except UnreadableSummary:
        return False


def _settings_key(settings: TrainSettings) -> str:
    return settings.model_dump_json()


def copy_run(twin: Path, run: Path) -> None:
    """Give ``run`` the results of ``twin``, a finished run of the same start and settings (training is
    deterministic for a seed, so training again would only repeat it); checkpoints are not copied."""
    summary = RunSummary.read(twin)
    with atomic_folder(run, overwrite=True) as tmp:
        shutil.copytree(twin, tmp, dirs_exist_ok=True, ignore=shutil.ignore_patterns(CHECKPOINTS, SUMMARY))
        summary.copied_from = str(twin)
        summary.write(tmp)
