"""One writer per run: an advisory lock that every launcher takes before it touches a run folder.

A sweep spread over machines (``--only`` by hand, Ray, Slurm) writes into one ``results/`` folder on a shared
filesystem. Two writers of one run would interleave checkpoints and metrics, so each run has a lock file
(``locks/<experiment>-seed<k>.lock``, beside ``runs/`` so the report never mistakes it for a run) held with
``flock`` for as long as the run is written. The kernel drops the lock when its holder dies, even by
``kill -9``, so a killed run never blocks the next attempt; the file names its holder (host, pid, since) for
the one-line error another launcher gets. On NFS, ``flock`` is carried by the server's byte-range locks
(Linux 2.6.12 and later).
"""

from __future__ import annotations

import datetime
import fcntl
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import InterpruneError
from .results import SweepLayout

__all__ = ["RunBusy", "lock_path", "run_lock", "check_free"]


class RunBusy(InterpruneError):
    """Another process is writing this run."""


def lock_path(out: Path, experiment: str, seed: int) -> Path:
    return SweepLayout(out).lock(experiment, seed)


def _holder(path: Path) -> str:
    try:
        return path.read_text().strip() or "another process"
    except OSError:
        return "another process"


@contextmanager
def run_lock(out: Path, experiment: str, seed: int) -> Iterator[None]:
    """Hold the run's lock while the block runs; ``RunBusy`` at once if someone else holds it."""
    path = lock_path(out, experiment, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunBusy(f"run {experiment} seed {seed} is being written by {_holder(path)} "
                          f"(lock {path}); wait for it to finish, or give this sweep another --out") from None
        since = datetime.datetime.now().isoformat(timespec="seconds")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since {since}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # closing drops the flock


def check_free(out: Path, runs: list[tuple[str, int]]) -> None:
    """Before any work: refuse, in one line, a sweep whose runs another launcher is writing now."""
    for experiment, seed in runs:
        path = lock_path(out, experiment, seed)
        if not path.exists():
            continue
        with run_lock(out, experiment, seed):
            pass
