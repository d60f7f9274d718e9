"""Fault injection: kill -9 at random moments of ``train`` and ``sweep``, again and again; a corrupt
checkpoint; an empty summary; a full disk. Nothing may be lost, duplicated or changed by it.

The killed processes are forks of this one (already holding torch, transformers and Lightning), so a
kill-and-resume cycle costs the run itself, not an interpreter start; SIGKILL gives them no chance to
clean up, exactly like ``kill -9``.
"""

import csv
import multiprocessing
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from interprune.sweep.config import load_sweep
from interprune.sweep.report import write_report
from interprune.sweep.run import run_sweep
from interprune.train.resume import check_checkpoint
from interprune.train.metrics import read_metrics
from interprune.train.run import train
from interprune.train.settings import TrainSettings
from interprune.train.summary import RunSummary

FORK = multiprocessing.get_context("fork")
SETTINGS = TrainSettings(steps=8, val_every=2, workers=0, log_every=1)


def hidden(folder: Path) -> list[str]:
    """Temporaries (or anything hidden) anywhere under ``folder``: a finished run must leave none."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob(".*"))


def table(run: Path) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "wall_time"} for row in read_metrics(run)]


def _train(model, data, out, kill_at):
    if kill_at:  # die (SIGKILL, no cleanup) at the kill_at[1]-th rename onto a file or folder named kill_at[0]
        replace, calls = os.replace, [0]

        def dying_replace(src, dst):
            if Path(dst).name == kill_at[0]:
                calls[0] += 1
                if calls[0] == kill_at[1]:
                    os.kill(os.getpid(), signal.SIGKILL)
            return replace(src, dst)

        os.replace = dying_replace
    train(model, data, out, SETTINGS, resume=True, progress=False)


@pytest.fixture(autouse=True)
def one_thread():
    """Every run here on one thread, parent and children alike: a forked child cannot use the OpenMP thread
    pool its parent started (its first parallel region would wait forever), and runs compared digit for digit
    must reduce in the same order."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _in_child(target, args):
    import torch

    torch.set_num_threads(1)  # see one_thread: never the parent's thread pool
    target(*args)


def run_killed(target, args, delay: float | None) -> bool:
    """Run ``target`` in a forked child, SIGKILL it after ``delay`` seconds; True if it finished first."""
    child = FORK.Process(target=_in_child, args=(target, args))
    child.start()
    child.join(delay)
    if child.is_alive():
        child.kill()
        child.join()
        return False
    assert child.exitcode in (0, -signal.SIGKILL), f"the child failed (exit code {child.exitcode})"
    return child.exitcode == 0


def test_train_killed_again_and_again_resumes_to_the_same_result(detector_dir, rocks_dir, tmp_path):
    started = time.perf_counter()
    whole = train(detector_dir, rocks_dir, tmp_path / "whole", SETTINGS, progress=False)
    took = time.perf_counter() - started
    out = tmp_path / "killed"
    rng = random.Random(0)
    kills = 0
    while not run_killed(_train, (detector_dir, rocks_dir, out, None), rng.uniform(0.1, 0.7) * took if kills < 4 else None):
        kills += 1
    exact = tmp_path / "exact"
    # at exact moments: with a checkpoint complete but not yet renamed (twice), with the model folder
    # complete but not in place, and with the summary complete but not in place
    for kill_at in (("last.ckpt", 2), ("last.ckpt", 3), ("model", 1), ("summary.json", 1)):
        assert not run_killed(_train, (detector_dir, rocks_dir, exact, kill_at), None)
        assert not (exact / "summary.json").exists()
    assert run_killed(_train, (detector_dir, rocks_dir, exact, None), None)
    for run in (out, exact):
        summary = RunSummary.read(run)
        rows = table(run)
        assert [int(r["step"]) for r in rows] == list(range(9))  # every step exactly once (validation at 0..8)
        assert rows == table(tmp_path / "whole")
        assert (summary.final_val_loss, summary.best_val_loss, summary.map, summary.map_50) == (
            whole.final_val_loss, whole.best_val_loss, whole.map, whole.map_50)
        assert hidden(run) == []
        check_checkpoint(run / "checkpoints" / "last.ckpt")


SWEEP = """\
name: faults
source: {source}
target: {{d_model: 16, encoder_ffn_dim: 32, decoder_ffn_dim: 32}}
data: {data}
seeds: [0]
train: {{steps: 4, val_every: 2, workers: 0, log_every: 1}}
bench: false
experiments:
  - {{name: full-pretrained, size: full, init: pretrained}}
  - {{name: small-area, size: small, init: area}}
"""


def _sweep(config, out):
    run_sweep(config, out, progress=False)


def test_sweep_survives_kills_a_corrupt_checkpoint_and_an_empty_summary(detector_dir, rocks_dir, tmp_path, capsys):
    (tmp_path / "sweep.yaml").write_text(SWEEP.format(source=detector_dir, data=rocks_dir))
    config = load_sweep(tmp_path / "sweep.yaml")
    started = time.perf_counter()
    run_sweep(config, tmp_path / "whole", progress=False)
    took = time.perf_counter() - started
    out = tmp_path / "killed"
    rng = random.Random(1)
    kills = 0
    while not run_killed(_sweep, (config, out), rng.uniform(0.05, 0.6) * took if kills < 4 else None):
        kills += 1
    runs = [Path("runs/full-pretrained/seed0"), Path("runs/small-area/seed0")]

    def same_as_uninterrupted():
        for run in runs:
            a, b = RunSummary.read(tmp_path / "whole" / run), RunSummary.read(out / run)
            assert (a.final_val_loss, a.map, a.steps) == (b.final_val_loss, b.map, b.steps), run
            assert table(tmp_path / "whole" / run) == table(out / run), run
        assert hidden(out) == []

    same_as_uninterrupted()
    capsys.readouterr()
    (out / runs[1] / "summary.json").write_text("")  # what a kill during a plain write used to leave
    (out / runs[0] / "summary.json").unlink()  # unfinished, and its checkpoint is damaged:
    ckpt = out / runs[0] / "checkpoints" / "last.ckpt"
    ckpt.write_bytes(ckpt.read_bytes()[:5000])
    run_sweep(config, out, progress=False)
    printed = capsys.readouterr().out
    assert f"[full-pretrained seed 0] {ckpt} is cut short or not a checkpoint" in printed
    assert "kept it as last.ckpt.corrupt and starting this run again from scratch" in printed
    assert "[small-area seed 0] " in printed and "summary.json is unreadable (empty): redoing the run" in printed
    same_as_uninterrupted()
    assert (ckpt.parent / "last.ckpt.corrupt").stat().st_size == 5000
    for folder in (out, tmp_path / "whole"):
        write_report(folder)
    timed = ("train seconds", "pipeline seconds")  # clocks differ between runs; everything else may not
    reports = [[{k: v for k, v in row.items() if k not in timed} for row in csv.DictReader(
        (folder / "summary.csv").open())] for folder in (out, tmp_path / "whole")]
    assert len(reports[0]) == 2 and reports[0] == reports[1]
    (out / runs[1] / "summary.json").write_text("")
    capsys.readouterr()
    write_report(out)  # the report is made of what is readable, and says what it left out
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "summary.json is unreadable (empty); left out" in err
    assert [row["experiment"] for row in csv.DictReader((out / "summary.csv").open())] == ["full-pretrained"]


def _write_rocks(out):
    from interprune.data.rocks import NAMES, draw_rocks
    from interprune.data.synthetic import write_dataset

    write_dataset(out, draw_rocks, NAMES, "rocks", train=30, valid=5, copies=2, size=96, seed=0)


def _write_rocks_dying_at_the_rename(out):
    """Write the dataset, and die (SIGKILL) at the rename that would put the finished folder in place."""
    replace = os.replace

    def dying_replace(src, dst):
        if Path(dst).name == Path(out).name:
            os.kill(os.getpid(), signal.SIGKILL)
        return replace(src, dst)

    os.replace = dying_replace
    _write_rocks(out)


def test_a_killed_dataset_write_leaves_nothing_that_blocks_the_next(tmp_path):
    started = time.perf_counter()
    _write_rocks(tmp_path / "whole")
    took = time.perf_counter() - started
    out = tmp_path / "killed"
    # the worst moment, for certain: everything written, not yet in place
    assert not run_killed(_write_rocks_dying_at_the_rename, (out,), None)
    left = hidden(tmp_path)
    assert left and not out.exists()  # only a hidden temporary, never a half dataset
    rng = random.Random(2)
    for _ in range(2):  # and random moments (a loaded machine may let a write finish: then it is removed)
        if run_killed(_write_rocks, (out,), rng.uniform(0.2, 0.6) * took):
            shutil.rmtree(out)
        assert not out.exists()  # killed: nothing in place; finished: removed above
    _write_rocks(out)  # the next write to the same place runs, and sweeps the dead writers' temporaries away
    assert hidden(tmp_path) == []
    for name in ("train/_annotations.coco.json", "valid/_annotations.coco.json", "train/rocks_0029_1.jpg"):
        assert (out / name).read_bytes() == (tmp_path / "whole" / name).read_bytes()


FULL_DISK = """
import sys
from pathlib import Path
from interprune.cli import main
from interprune.atomic import clean_stale
from interprune.train.resume import check_checkpoint
disk, model, data = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
codes = [main(["train", "--model", model, "--data", data, "--out", str(disk / "run"), "--steps", "4",
               "--val-every", "2", "--workers", "0"])]
check_checkpoint(disk / "run" / "checkpoints" / "last.ckpt")  # the first one, whole
codes.append(main(["data", "rocks", "--out", str(disk / "rocks"), "--train", "100", "--size", "256"]))
codes.append(main(["shrink", model, "--set", "encoder_ffn_dim=8192", "--out", str(disk / "big")]))
print("codes", codes)
"""


@pytest.mark.slow
def test_a_full_disk_is_one_line_and_leaves_nothing_half_written(detector_dir, rocks_dir, tmp_path):
    """A real full disk: a 6 MB tmpfs in a private mount namespace (skipped where that is not allowed)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if shutil.which("unshare") is None or subprocess.run(["unshare", "-rm", "true"], capture_output=True).returncode:
        pytest.skip("no unprivileged mount namespace here to make a small tmpfs in")
    script = tmp_path / "full.py"
    script.write_text(FULL_DISK)
    command = f"mount -t tmpfs -o size=6m tmpfs {disk} && exec {sys.executable} {script} {disk} {detector_dir} {rocks_dir}"
    run = subprocess.run(["unshare", "-rm", "sh", "-c", command], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)})
    assert run.returncode == 0, run.stderr[-3000:]
    assert "codes [2, 2, 2]" in run.stdout
    errors = [line for line in run.stderr.splitlines() if line.startswith("interprune: error:")]
    assert len(errors) == 3 and all("no space left on the device while writing" in e for e in errors)
    assert "last.ckpt" in errors[0] and "rocks" in errors[1] and "big" in errors[2]
    assert "Traceback" not in run.stderr
