"""Spread a sweep's runs over a Ray cluster or a Slurm scheduler.

A sweep is a graph of independent training runs: one per (experiment, seed), each waiting only for the runs
it starts from (``from:``) or learns from (``teacher:``) of the same seed. The scheduler here submits every
run as soon as those have results, through a launcher (Ray tasks, or submitit jobs: Slurm, or submitit's
local executor on a machine without Slurm), and each run calls the same ``run.run_one`` as the serial sweep,
so its folder, its exact resume and its summary are the serial ones. ``same_steps_as:`` needs only the other
pipeline's step count, which the YAML gives, so it does not wait.

Faults: a worker or job that dies (``kill -9``, a lost node, a pre-empted job) is submitted again up to
``retries`` times and resumes from its checkpoint. An error raised by the run itself would repeat (training
is deterministic), so it fails the run at once; its dependants are then skipped with the reason while the
other runs go on. Running the same command again skips finished runs and resumes the rest.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from dataclasses import dataclass, field
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, Protocol

from ..errors import InterpruneError
from .config import SweepConfig
from .locks import check_free, run_lock
from .progress import duration
from .costs import bench_experiments
from .results import SweepLayout
from .run import SourceCache, check_sweep, finished_twins, is_finished, prepare_data, run_one, start_sweep

__all__ = ["RunKey", "Outcome", "Launcher", "launch_sweep", "launched_sweep", "execute", "ray_launcher", "slurm_launcher"]

@dataclass(frozen=True, order=True)
class RunKey:
    experiment: str
    seed: int

    def __str__(self) -> str:
        return f"{self.experiment} seed {self.seed}"


@dataclass
class Outcome:
    """What became of one run: ``done`` (finished, now or before), ``failed`` (for good) or ``skipped``
    (a run it depends on failed)."""

    status: Literal["done", "failed", "skipped"]
    message: str = ""
    seconds: float = 0.0


class Lost(Exception):
    """The worker or job running a run died before it returned: worth another attempt."""


class Launcher(Protocol):
    """Where runs execute. ``submit`` starts runs and returns one handle each; ``poll`` returns the handles
    that have finished (waiting up to ``timeout`` seconds for one); ``outcome`` is a finished handle's
    ``Outcome``, or raises ``Lost``."""

    name: str

    def submit(self, config: SweepConfig, out: Path, keys: list[RunKey]) -> list[Any]: ...
    def poll(self, handles: list[Any], timeout: float) -> list[Any]: ...
    def outcome(self, handle: Any) -> Outcome: ...
    def close(self) -> None: ...


def execute(config: SweepConfig, out: str, key: RunKey, threads: int) -> Outcome:
    """One run on a worker: its output goes to ``logs/<experiment>-seed<k>.log`` (appended, one header line
    per attempt), the run's lock is held throughout, and any error becomes a failed ``Outcome`` (an
    exception escaping here would look like a lost worker and be retried)."""
    started = time.monotonic()
    out_path = Path(out)
    log = SweepLayout(out_path).log(key.experiment, key.seed)
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a", buffering=1) as stream, contextlib.redirect_stdout(stream), contextlib.redirect_stderr(stream):
        print(f"[interprune] {key}: pid {os.getpid()} on {socket.gethostname()}", flush=True)
        try:
            import torch

            torch.set_num_threads(max(1, threads))
            with run_lock(out_path, key.experiment, key.seed):
                data = prepare_data(config, out_path)  # written once by the driver: here it is only opened
                experiment = config.experiment(key.experiment)
                run_one(config, out_path, experiment, key.seed, data, sources=SourceCache(config),
                        twins=finished_twins(config, out_path), progress=True)
        except Exception as err:  # noqa: BLE001 - every error of the run is reported, none kills the sweep
            message = " ".join((str(err) if isinstance(err, InterpruneError) else f"{type(err).__name__}: {err}").split())
            print(f"[interprune] {key} failed: {message}", flush=True)
            return Outcome("failed", message, time.monotonic() - started)
    return Outcome("done", "", time.monotonic() - started)


@dataclass
class _State:
    """The scheduler's book-keeping: what waits, what runs (handle -> key), what ended, and how."""

    waiting: list[RunKey]
    total: int = 0
    running: dict[int, tuple[Any, RunKey]] = field(default_factory=dict)
    ended: dict[RunKey, Outcome] = field(default_factory=dict)
    attempts: dict[RunKey, int] = field(default_factory=dict)
    started: dict[RunKey, float] = field(default_factory=dict)
    timed: list[float] = field(default_factory=list)


def dependencies(config: SweepConfig, key: RunKey) -> list[RunKey]:
    experiment = config.experiment(key.experiment)
    return [RunKey(d, key.seed) for d in dict.fromkeys(x for x in (experiment.from_, experiment.teacher) if x)]


def launch_sweep(config: SweepConfig, out: str | Path, launcher: Launcher, *, retries: int = 2,
                 only: str | None = None, poll_seconds: float = 1.0) -> dict[RunKey, Outcome]:
    """Run every (experiment, seed) through ``launcher``, each as soon as its dependencies have results;
    print a line per finished run (done/total, running, failed, time left). Returns every run's outcome.
    The caller has checked the sweep (``run.check_sweep``) and prepared the data once."""
    out = Path(out).resolve()
    keys = [RunKey(e.name, s) for e in config.ordered() if not only or e.name == only for s in config.seeds]
    check_free(out, [(k.experiment, k.seed) for k in keys])
    state = _State(waiting=list(keys), total=len(keys))
    print(f"sweep: {len(keys)} runs through {launcher.name}; logs in {SweepLayout(out).logs}/")
    for key in keys:  # finished before: nothing to submit (a damaged summary is the worker's to redo)
        if is_finished(SweepLayout(out).run(key.experiment, key.seed)):
            state.waiting.remove(key)
            state.ended[key] = Outcome("done", "finished before")
            print(f"{_progress(state)} {key}: finished before: skipped")
    try:
        while state.waiting or state.running:
            _submit_ready(config, out, launcher, state, only)
            handles = [h for h, _ in state.running.values()]
            for handle in launcher.poll(handles, poll_seconds):
                _finish(launcher, state, handle, retries)
    finally:
        launcher.close()
    return state.ended


def _submit_ready(config: SweepConfig, out: Path, launcher: Launcher, state: _State, only: str | None) -> None:
    ready, blocked = [], []
    for key in state.waiting:
        deps = [] if only else dependencies(config, key)
        failed = [d for d in deps if d in state.ended and state.ended[d].status != "done"]
        if failed:
            state.ended[key] = Outcome("skipped", f"it needs {failed[0]}, which {state.ended[failed[0]].status}")
            print(f"{_progress(state)} {key}: skipped, {state.ended[key].message}")
        elif all(d in state.ended for d in deps):
            ready.append(key)
        else:
            blocked.append(key)
    state.waiting = blocked
    if ready:
        for key, handle in zip(ready, launcher.submit(config, out, ready)):
            state.running[id(handle)] = (handle, key)
            state.started[key] = time.monotonic()
            state.attempts[key] = state.attempts.get(key, 0) + 1


def _finish(launcher: Launcher, state: _State, handle: Any, retries: int) -> None:
    _, key = state.running.pop(id(handle))
    try:
        outcome = launcher.outcome(handle)
    except Lost as err:
        if state.attempts[key] <= retries:
            print(f"{key}: its worker was lost ({err}); attempt {state.attempts[key] + 1} of {retries + 1} "
                  f"resumes from its checkpoint")
            state.waiting.insert(0, key)
            return
        outcome = Outcome("failed", f"its worker was lost {state.attempts[key]} times; last: {err}")
    state.ended[key] = outcome
    if outcome.status == "done":
        state.timed.append(time.monotonic() - state.started[key])
    print(f"{_progress(state)} {key}: "
          f"{'done in ' + duration(outcome.seconds) if outcome.status == 'done' else 'FAILED: ' + outcome.message}")


def _progress(state: _State) -> str:
    """``[3/8 done, 2 running, 1 failed, 1 skipped, about 4.2 min left]``: the time left is the mean time
    of the runs finished so far, times the runs left, shared by as many as run at once now."""
    counts = {status: sum(o.status == status for o in state.ended.values()) for status in ("done", "failed", "skipped")}
    parts = [f"{counts['done']}/{state.total} done", f"{len(state.running)} running", f"{counts['failed']} failed"]
    if counts["skipped"]:
        parts.append(f"{counts['skipped']} skipped")
    remaining = state.total - len(state.ended)
    if state.timed and remaining:
        parallel = max(1, len(state.running))
        parts.append(f"about {duration(sum(state.timed) / len(state.timed) * remaining / parallel)} left")
    return f"[{', '.join(parts)}]"


def launched_sweep(config: SweepConfig, out: str | Path, make_launcher: Callable[[], Launcher], *,
                   retries: int = 2, only: str | None = None) -> dict[RunKey, Outcome]:
    """The whole sweep through a launcher: the checks first (the sweep's, then the launcher's: an address,
    an installed package, the resources asked for), the data once, the runs, then the bench of the finished
    models here, as the serial sweep does."""
    out = Path(out).resolve()
    check_sweep(config, only, out)
    launcher = make_launcher()
    try:
        start_sweep(config, out)
    except BaseException:
        launcher.close()
        raise
    outcomes = launch_sweep(config, out, launcher, retries=retries, only=only)
    if config.bench:
        bench_experiments(config, out, only=only)
    return outcomes


def ray_launcher(address: str | None, cpus: float, gpus: float) -> Launcher:
    from .launchers.ray_cluster import RayLauncher

    return RayLauncher(address, cpus, gpus)


def slurm_launcher(out: Path, *, local: bool, partition: str | None, cpus: int, gpus: int, minutes: int,
                   parallelism: int) -> Launcher:
    from .launchers.slurm import SlurmLauncher

    return SlurmLauncher(out, local=local, partition=partition, cpus=cpus, gpus=gpus, minutes=minutes,
                         parallelism=parallelism)
