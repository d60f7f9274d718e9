"""Runs as Slurm jobs through submitit, or through submitit's local executor on a machine without Slurm
(the same code path, which is how the tests run it)."""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from ...errors import InterpruneError
from ..config import SweepConfig
from ..launch import Lost, Outcome, RunKey, execute
from ..results import SweepLayout

__all__ = ["SlurmLauncher", "slurm_gpus"]


def slurm_gpus() -> int | None:
    """The most GPUs any node of the Slurm cluster offers (``sinfo``'s GRES), or None when it cannot tell."""
    try:
        gres = subprocess.run(["sinfo", "-h", "-o", "%G"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    counts = [int(m) for m in re.findall(r"gpu(?::[^:,()]+)?:(\d+)", gres)]
    return max(counts, default=0)


class SlurmLauncher:
    """Runs that become ready together are submitted together, as one job array on Slurm
    (``--array-parallelism`` of them at a time); a run waits for its dependencies in this scheduler, so
    the scheduler's queue only ever holds runs that can start."""

    name = "slurm"

    def __init__(self, out: Path, *, local: bool, partition: str | None, cpus: int, gpus: int, minutes: int,
                 parallelism: int) -> None:
        try:
            import submitit
        except ImportError:
            raise InterpruneError("--launcher slurm needs submitit: pip install 'interprune[slurm]'") from None
        if not local and shutil.which("sbatch") is None:
            raise InterpruneError("--launcher slurm: no Slurm cluster here (sbatch not found); run it on a "
                                  "login node, or add --local for submitit's local executor on this machine")
        most = _local_gpus() if local else slurm_gpus()
        if most is not None and gpus > most:
            raise InterpruneError(f"--gpus-per-run {gpus}: no node {'here' if local else 'of this Slurm cluster'} "
                                  f"has that many GPUs (the most is {most}); ask for at most {most}")
        self.name = "submitit's local executor" if local else "slurm"
        self.cpus = cpus
        self.submitit = submitit
        self.executor = submitit.AutoExecutor(folder=SweepLayout(Path(out)).logs / "submitit" / "%j",
                                              cluster="local" if local else "slurm")
        params: dict[str, Any] = {"name": "interprune", "timeout_min": minutes, "cpus_per_task": cpus,
                                  "gpus_per_node": gpus, "slurm_array_parallelism": parallelism}
        if partition:
            params["slurm_partition"] = partition
        self.executor.update_parameters(**params)

    def submit(self, config: SweepConfig, out: Path, keys: list[RunKey]) -> list[Any]:
        with self.executor.batch():
            jobs = [self.executor.submit(execute, config, str(out), key, self.cpus) for key in keys]
        return jobs

    def poll(self, handles: list[Any], timeout: float) -> list[Any]:
        deadline = time.monotonic() + timeout
        while True:
            done = [job for job in handles if job.done()]
            if done or time.monotonic() >= deadline:
                return done
            time.sleep(min(0.5, timeout))

    def outcome(self, handle: Any) -> Outcome:
        try:
            return handle.result()
        except Exception as err:  # noqa: BLE001 - execute() returns every run error, so this is a lost job
            raise Lost(f"job {handle.job_id}: {' '.join(str(err).split())[:200]}") from None

    def close(self) -> None:
        pass


def _local_gpus() -> int:
    import torch

    return torch.cuda.device_count()
