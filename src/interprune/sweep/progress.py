"""Where a sweep is: run j of n, and about how long the rest will take."""

from __future__ import annotations

import time

from ..train.progress import duration

__all__ = ["SweepProgress", "duration"]


class SweepProgress:
    """Counts the sweep's runs; the time left is the mean time of the runs trained so far in this process
    times the runs still to train (runs finished in an earlier process are skipped and cost nothing)."""

    def __init__(self, total: int, clock=time.monotonic) -> None:
        self.total, self.clock = total, clock
        self.index = 0
        self.trained: list[float] = []
        self.skipped = 0
        self._started: float | None = None

    def next(self, skipped: bool = False) -> str:
        """Advance to the next run; returns its ``[j/n]`` prefix, ``[j/n, about 5.2 min left]`` once a run has
        been timed."""
        self.index += 1
        self.skipped += skipped
        where = f"{self.index}/{self.total}"
        if skipped:
            return f"[{where}]"
        self._started = self.clock()
        left = self.total - self.index + 1  # this run included
        if self.trained:
            return f"[{where}, about {duration(sum(self.trained) / len(self.trained) * left)} left]"
        return f"[{where}]"

    def done(self) -> None:
        """The run started by the last ``next`` finished training."""
        if self._started is not None:
            self.trained.append(self.clock() - self._started)
            self._started = None
