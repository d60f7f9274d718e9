"""The demo's sweep run serially and through a local Ray instance: wall time of each and whether their
``summary.csv`` digits agree.

    python benchmarks/cluster_sweep.py [--steps 150] [--cpus-per-run 1] [--seeds 2]

Each sweep runs in its own process (``interprune sweep --preset demo``), into its own temporary folder, with
the bench switched off (it is timed the same way in both and would only add a constant).
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from interprune.sweep.config import preset_path

TIMED = ("train seconds", "pipeline seconds", "teacher s/step")


def sweep(plan: Path, out: Path, *flags: str) -> float:
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "interprune", "sweep", str(plan), "--out", str(out), *flags],
                          capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    if proc.returncode:
        sys.exit(f"sweep {' '.join(flags) or 'serial'} failed:\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}")
    return time.perf_counter() - started


def digits(out: Path) -> list[dict]:
    rows = csv.DictReader((out / "summary.csv").open())
    return [{k: v for k, v in row.items() if k not in TIMED} for row in rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--cpus-per-run", default="1")
    args = parser.parse_args()
    plan = yaml.safe_load(preset_path("demo").read_text())
    plan["train"]["steps"] = args.steps
    plan["train"]["val_every"] = min(plan["train"]["val_every"], args.steps)
    plan["seeds"] = list(range(args.seeds))
    plan["bench"] = False
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "demo.yaml"
        path.write_text(yaml.safe_dump(plan))
        serial = sweep(path, Path(tmp) / "serial")
        ray = sweep(path, Path(tmp) / "ray", "--launcher", "ray", "--cpus-per-run", args.cpus_per_run)
        same = digits(Path(tmp) / "serial") == digits(Path(tmp) / "ray")
    print(f"demo sweep, {args.steps} steps, {args.seeds} seed(s), {os.cpu_count()} CPUs")
    print(f"  serial                          {serial:7.1f} s")
    print(f"  ray, --cpus-per-run {args.cpus_per_run:<12} {ray:7.1f} s   ({serial / ray:.2f}x the serial speed)")
    print(f"  summary.csv digits {'identical' if same else 'DIFFER'}")


if __name__ == "__main__":
    main()
