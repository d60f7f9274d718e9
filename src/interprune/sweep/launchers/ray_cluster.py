"""Runs as Ray tasks: on a cluster at ``--address``, or on a local Ray instance started and stopped here."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from ...errors import InterpruneError
from ..config import SweepConfig
from ..launch import Lost, Outcome, RunKey, execute

__all__ = ["RayLauncher", "check_address"]


def check_address(address: str) -> None:
    """Fail in one line, before Ray retries for a minute, when ``host:port`` or ``ray://host:port`` answers
    no connection. (``auto`` is left to Ray, which says at once when it finds no running instance.)"""
    if address == "auto":
        return
    parsed = urlparse(address if "://" in address else f"tcp://{address}")
    if not parsed.hostname or not parsed.port:
        raise InterpruneError(f"--address {address}: not host:port, ray://host:port or auto")
    try:
        socket.create_connection((parsed.hostname, parsed.port), timeout=5).close()
    except OSError as err:
        raise InterpruneError(f"--address {address}: cannot reach {parsed.hostname}:{parsed.port} "
                              f"({err.strerror or err}); start the cluster (ray start --head) or fix the address") from None


class RayLauncher:
    """Each run is a task asking for ``cpus`` CPUs and ``gpus`` GPUs; Ray places it on a node that has them.
    Ray's own task retries are off: the scheduler retries a lost worker itself, so it can say so."""

    name = "ray"

    def __init__(self, address: str | None, cpus: float, gpus: float) -> None:
        try:
            import ray
        except ImportError:
            raise InterpruneError("--launcher ray needs Ray: pip install 'interprune[ray]'") from None
        if address:
            check_address(address)
        self.ray, self.cpus, self.gpus = ray, cpus, gpus
        try:
            ray.init(address=address, include_dashboard=False, logging_level="error", log_to_driver=False,
                     configure_logging=True)
        except ConnectionError as err:
            raise InterpruneError(f"--address {address}: {' '.join(str(err).split())[:200]}") from None
        try:
            self._check_resources()
        except InterpruneError:
            ray.shutdown()
            raise
        self.task = ray.remote(num_cpus=cpus, num_gpus=gpus, max_retries=0)(execute)

    def _check_resources(self) -> None:
        nodes = [n["Resources"] for n in self.ray.nodes() if n.get("Alive")]
        for kind, asked, flag in (("GPU", self.gpus, "--gpus-per-run"), ("CPU", self.cpus, "--cpus-per-run")):
            most = max((n.get(kind, 0) for n in nodes), default=0)
            if asked > most:
                raise InterpruneError(f"{flag} {asked:g}: no node of this Ray cluster has that many "
                                      f"{kind}s (the most is {most:g}); ask for at most {most:g}")

    def submit(self, config: SweepConfig, out: Path, keys: list[RunKey]) -> list[Any]:
        return [self.task.remote(config, str(out), key, int(max(1, self.cpus))) for key in keys]

    def poll(self, handles: list[Any], timeout: float) -> list[Any]:
        if not handles:
            return []
        ready, _ = self.ray.wait(handles, num_returns=len(handles), timeout=timeout)
        return ready

    def outcome(self, handle: Any) -> Outcome:
        try:
            return self.ray.get(handle)
        except self.ray.exceptions.RayError as err:  # a dead worker or node, or a task Ray could not run
            raise Lost(" ".join(str(err).split())[:200]) from None

    def close(self) -> None:
        self.ray.shutdown()
