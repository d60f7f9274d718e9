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

import torch
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


def digits(out: Path) -> dict[str, dict[str, str]]:
    rows = csv.DictReader((out / "summary.csv").open())
    return {row["experiment"]: {k: v for k, v in row.items() if k not in TIMED} for row in rows}


def differences(a: dict[str, dict[str, str]], b: dict[str, dict[str, str]]) -> list[str]:
    return [f"{name} {column}: {row[column]} vs {b.get(name, {}).get(column)}"
            for name, row in a.items() for column in row if b.get(name, {}).get(column) != row[column]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--cpus-per-run", default="1")
    parser.add_argument("--threads", type=int, help="threads of the serial runs (default: torch's); 1 makes the "
                        "digits comparable with --cpus-per-run 1")
    args = parser.parse_args()
    plan = yaml.safe_load(preset_path("demo").read_text())
    plan["train"]["steps"] = args.steps
    plan["train"]["val_every"] = min(plan["train"]["val_every"], args.steps)
    plan["seeds"] = list(range(args.seeds))
    plan["bench"] = False
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "demo.yaml"
        path.write_text(yaml.safe_dump(plan))
        if args.threads:
            os.environ["OMP_NUM_THREADS"] = str(args.threads)
            torch.set_num_threads(args.threads)
        serial = sweep(path, Path(tmp) / "serial")
        os.environ.pop("OMP_NUM_THREADS", None)
        ray = sweep(path, Path(tmp) / "ray", "--launcher", "ray", "--cpus-per-run", args.cpus_per_run)
        differ = differences(digits(Path(tmp) / "serial"), digits(Path(tmp) / "ray"))
    print(f"demo sweep, {args.steps} steps, {args.seeds} seed(s), {os.cpu_count()} CPUs")
    print(f"  serial                          {serial:7.1f} s")
    print(f"  ray, --cpus-per-run {args.cpus_per_run:<12} {ray:7.1f} s   ({serial / ray:.2f}x the serial speed)")
    print(f"  summary.csv digits {'identical' if not differ else 'differ (serial vs ray):'}")
    for line in differ:
        print(f"    {line}")
    if differ:
        print(f"  (the serial runs use {torch.get_num_threads()} threads each, the Ray tasks {args.cpus_per_run}: "
              "another reduction order in the matrix products)")


if __name__ == "__main__":
    main()
