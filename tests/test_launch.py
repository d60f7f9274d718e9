"""Sweeps spread over launchers: the scheduler's order, retries and failures (with a launcher in this
process), then real Ray and submitit runs that must give the serial sweep's digits."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from interprune.cli import main
from interprune.errors import InterpruneError
from interprune.sweep.config import load_sweep
from interprune.sweep.launch import Lost, Outcome, RunKey, launch_sweep
from interprune.sweep.locks import run_lock

GRAPH = """\
source: x
target: {}
bench: false
seeds: [0, 1]
experiments:
  - {name: distilled, init: select, from: full, teacher: full}
  - {name: full, size: full, init: pretrained}
  - {name: alone, init: select, same_steps_as: distilled}
"""


class Handle:
    def __init__(self, key: RunKey) -> None:
        self.key = key


class FakeLauncher:
    """Runs nothing: each submitted run ends at the next poll, as ``script`` says (``lost`` or ``failed``
    for its next attempts, else done), and every submission is recorded."""

    name = "fake"

    def __init__(self, script: dict[RunKey, list[str]] | None = None) -> None:
        self.script = script or {}
        self.submitted: list[list[RunKey]] = []
        self.closed = False

    def submit(self, config, out, keys):
        self.submitted.append(list(keys))
        return [Handle(k) for k in keys]

    def poll(self, handles, timeout):
        return handles

    def outcome(self, handle):
        todo = self.script.get(handle.key, [])
        what = todo.pop(0) if todo else "done"
        if what == "lost":
            raise Lost("worker died")
        return Outcome("failed", "boom") if what == "failed" else Outcome("done", seconds=1.0)

    def close(self):
        self.closed = True


@pytest.fixture
def graph(tmp_path):
    path = tmp_path / "sweep.yaml"
    path.write_text(GRAPH)
    return load_sweep(path)


def test_runs_start_when_their_dependencies_have_results(graph, tmp_path, capsys):
    launcher = FakeLauncher()
    outcomes = launch_sweep(graph, tmp_path / "out", launcher, poll_seconds=0)
    full, distilled, alone = ("full", "distilled", "alone")
    first = {(k.experiment, k.seed) for k in launcher.submitted[0]}
    assert first == {(full, 0), (full, 1), (alone, 0), (alone, 1)}  # same_steps_as does not wait for results
    assert {(k.experiment, k.seed) for k in launcher.submitted[1]} == {(distilled, 0), (distilled, 1)}
    assert all(o.status == "done" for o in outcomes.values()) and len(outcomes) == 6 and launcher.closed
    out = capsys.readouterr().out
    assert "[6/6 done, 0 running, 0 failed]" in out and "sweep: 6 runs through fake" in out


def test_a_lost_worker_is_retried_then_fails_for_good_and_its_dependants_are_skipped(graph, tmp_path, capsys):
    script = {RunKey("full", 0): ["lost", "lost", "lost"], RunKey("full", 1): ["lost"],
              RunKey("alone", 1): ["failed"]}
    launcher = FakeLauncher(script)
    outcomes = launch_sweep(graph, tmp_path / "out", launcher, retries=2, poll_seconds=0)
    assert outcomes[RunKey("full", 1)].status == "done"  # lost once, resumed
    assert outcomes[RunKey("full", 0)].status == "failed"
    assert "lost 3 times" in outcomes[RunKey("full", 0)].message
    assert outcomes[RunKey("distilled", 0)] == Outcome("skipped", "it needs full seed 0, which failed")
    assert outcomes[RunKey("distilled", 1)].status == "done"  # the other seed's pipeline goes on
    assert outcomes[RunKey("alone", 1)] == Outcome("failed", "boom")  # a run's own error is not retried
    assert sum(k == RunKey("alone", 1) for batch in launcher.submitted for k in batch) == 1
    out = capsys.readouterr().out
    assert "full seed 0: its worker was lost (worker died); attempt 2 of 3 resumes from its checkpoint" in out
    assert "distilled seed 0: skipped, it needs full seed 0, which failed" in out
    assert out.rstrip().splitlines()[-1].startswith("[3/6 done, 0 running, 2 failed, 1 skipped]")


def test_a_run_another_launcher_is_writing_is_refused_before_any_work(graph, tmp_path):
    out = tmp_path / "out"
    with run_lock(out, "full", 1):
        launcher = FakeLauncher()
        with pytest.raises(InterpruneError, match=r"run full seed 1 is being written by pid \d+ on .* since "):
            launch_sweep(graph, out, launcher, poll_seconds=0)
        assert launcher.submitted == []
    launch_sweep(graph, out, FakeLauncher(), poll_seconds=0)  # released: goes ahead


# -- real launchers ------------------------------------------------------------------------------------------

TINY = """\
name: tiny
source: {source}
target: {{d_model: 16, encoder_ffn_dim: 32, decoder_ffn_dim: 32}}
data: {data}
seeds: [0]
train: {{steps: {steps}, val_every: 2, workers: 0, log_every: 1}}
bench: false
experiments:
  - {{name: full, size: full, init: pretrained}}
  - {{name: small, init: select, from: full, teacher: full}}
"""
TIMED = ("train seconds", "pipeline seconds", "teacher s/step")


def _cli(*args, env=None, **kwargs):
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.Popen([sys.executable, "-m", "interprune", *map(str, args)], env=environment,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs)


def _digits(out: Path) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in TIMED} for row in csv.DictReader((out / "summary.csv").open())]


@pytest.fixture(scope="module")
def serial(detector_dir, rocks_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("serial")
    (folder / "sweep.yaml").write_text(TINY.format(source=detector_dir, data=rocks_dir, steps=8))
    proc = _cli("sweep", folder / "sweep.yaml", "--out", folder / "results")
    assert proc.wait() == 0, proc.stdout.read()
    return folder / "sweep.yaml", _digits(folder / "results")


def test_ray_with_a_worker_killed_mid_run_gives_the_serial_digits(serial, tmp_path):
    pytest.importorskip("ray")
    plan, expected = serial
    out = tmp_path / "ray"
    proc = _cli("sweep", plan, "--out", out, "--launcher", "ray", "--cpus-per-run", 1)
    checkpoint = out / "runs" / "full" / "seed0" / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 240
    while not checkpoint.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    log = (out / "logs" / "full-seed0.log").read_text()
    pid = int(log.split(": pid ")[1].split()[0])
    os.kill(pid, signal.SIGKILL)  # the worker, mid-run: its checkpoint exists, its summary does not
    printed = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0, printed
    assert "full seed 0: its worker was lost" in printed and "attempt 2 of 3 resumes" in printed
    assert "[2/2 done, 0 running, 0 failed]" in printed
    assert _digits(out) == expected
    assert (out / "logs" / "full-seed0.log").read_text().count("[interprune] full seed 0: pid") == 2


def test_submitit_local_executor_gives_the_serial_digits(serial, tmp_path):
    pytest.importorskip("submitit")
    plan, expected = serial
    out = tmp_path / "slurm"
    proc = _cli("sweep", plan, "--out", out, "--launcher", "slurm", "--local")
    printed = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0, printed
    assert "through submitit's local executor" in printed and "[2/2 done, 0 running, 0 failed]" in printed
    assert _digits(out) == expected
    assert (out / "logs" / "submitit").is_dir() and (out / "logs" / "small-seed0.log").is_file()
    jobs = sorted((out / "logs" / "submitit").iterdir())
    again = _cli("sweep", plan, "--out", out, "--launcher", "slurm", "--local").communicate(timeout=300)[0]
    assert again.count("finished before: skipped") == 2, again
    assert sorted((out / "logs" / "submitit").iterdir()) == jobs  # the command again submits nothing finished
    assert _digits(out) == expected


@pytest.mark.parametrize("flags,message", [
    (["--launcher", "ray", "--address", "127.0.0.1:{port}"], "--address 127.0.0.1:{port}: cannot reach 127.0.0.1:{port}"),
    (["--launcher", "slurm"], "no Slurm cluster here (sbatch not found)"),
    (["--launcher", "slurm", "--local", "--gpus-per-run", "1"], "--gpus-per-run 1: no node here has that many GPUs"),
    (["--launcher", "ray", "--gpus-per-run", "64"], "--gpus-per-run 64: no node of this Ray cluster has that many"),
    (["--address", "auto"], "--address is for --launcher ray, not serial"),
    (["--launcher", "ray", "--retries", "-1"], "--retries -1: give 0 or more"),
])
def test_launcher_bad_input_is_one_line_before_any_work(serial, tmp_path, capsys, flags, message):
    if "slurm" in flags and "--local" not in flags and any(Path(p, "sbatch").exists() for p in os.environ["PATH"].split(":")):
        pytest.skip("this machine has Slurm")
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "out"
    flags = [f.format(port=port) for f in flags]
    assert main(["sweep", str(serial[0]), "--out", str(out), *flags]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message.format(port=port) in err, err
    assert not out.exists()
