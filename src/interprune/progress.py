"""A progress line for long shrinks: what is done, the rate and the time left.

On a terminal the line is redrawn in place; in a log (not a terminal) a line is printed now and then
(every tenth of the work or every 30 seconds), so a log stays short and still shows the job is alive.
"""

from __future__ import annotations

import sys
import time
from typing import Callable, TextIO

__all__ = ["progress_printer", "resolve_device"]


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else \
        f"{seconds // 60}:{seconds % 60:02d}"


def progress_printer(unit: str, stream: TextIO | None = None, every: float = 30.0) -> Callable[[int, int], None]:
    """``fn(done, total)`` that shows ``done/total unit [elapsed<left, rate unit/s]``."""
    out = stream or sys.stderr
    started = time.perf_counter()
    last = {"time": started, "tenth": 0}
    live = getattr(out, "isatty", lambda: False)()

    def show(done: int, total: int) -> None:
        now = time.perf_counter()
        elapsed = now - started
        rate = done / elapsed if elapsed > 0 else 0.0
        left = (total - done) / rate if rate > 0 else 0.0
        line = f"{done}/{total} {unit} [{_clock(elapsed)}<{_clock(left)}, {rate:.2f} {unit}/s]"
        if live:
            out.write("\r" + line + ("\n" if done >= total else ""))
            out.flush()
            return
        tenth = int(10 * done / max(total, 1))
        if done >= total or tenth > last["tenth"] or now - last["time"] >= every:
            last.update(time=now, tenth=tenth)
            print(line, file=out, flush=True)

    return show


def resolve_device(name: str | None) -> str:
    """``auto`` -> ``cuda`` when a GPU is there, else ``cpu``; a GPU asked for where none is: one line."""
    import torch

    from .errors import InterpruneError

    name = (name or "auto").strip()
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return name
    if name == "cuda" or name.startswith("cuda:"):
        index = name.partition(":")[2]
        if index and not index.isdigit():
            raise InterpruneError(f"--device {name}: write cuda:N with N a number")
        if not torch.cuda.is_available():
            raise InterpruneError(f"--device {name}: this machine has no GPU that torch can use; use --device cpu")
        if index and int(index) >= torch.cuda.device_count():
            raise InterpruneError(f"--device {name}: there are only {torch.cuda.device_count()} GPU(s)")
        return name
    raise InterpruneError(f"--device {name!r} is not a device; use auto, cpu, cuda or cuda:N")
