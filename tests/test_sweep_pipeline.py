"""Sweeps whose experiments start from and learn from other experiments' results."""

import csv
import json

import pytest

from interprune import InterpruneError
from interprune.cli import main
from interprune.sweep.config import load_sweep, preset_path
from interprune.sweep.report import write_report
from interprune.sweep.run import run_sweep

HEAD = "source: x\ntarget: {}\nexperiments:\n"


def sweep(tmp_path, experiments, name="sweep.yaml"):
    path = tmp_path / name
    path.write_text(HEAD + experiments)
    return path


@pytest.mark.parametrize("experiments,message", [
    ("  - {name: a, size: full, init: pretrained}\n  - {name: b, init: select, from: nope}\n",
     r"sweep.yaml:5: experiments.1.from: unknown experiment 'nope'; have: a, b"),
    ("  - {name: a, size: full, init: pretrained}\n  - name: b\n    init: select\n    teacher: c\n",
     r"sweep.yaml:7: experiments.1.teacher: unknown experiment 'c'"),
    ("  - {name: a, init: select, from: b}\n  - {name: b, init: select, teacher: a}\n",
     r"sweep.yaml:4: experiments.0.from: dependency cycle: a -> b -> a"),
    ("  - {name: a, init: select, same_steps_as: a}\n", r":4: experiments.0.same_steps_as: dependency cycle: a -> a"),
    ("  - {name: a, init: select}\n  - {name: b, size: full, init: transfer, from: a}\n",
     r":5: experiments.1.from: 'a' is small; a full-size model cannot start from it"),
    ("  - {name: a, init: select, train: {stepz: 3}}\n", r":4: experiments.0.train: stepz: unknown key"),
])
def test_dependency_errors_name_the_line(tmp_path, experiments, message):
    with pytest.raises(InterpruneError, match=message):
        load_sweep(sweep(tmp_path, experiments))


def test_dependency_order_and_step_budgets(tmp_path):
    config = load_sweep(sweep(tmp_path, (
        "  - {name: same, init: select, same_steps_as: distilled}\n"
        "  - {name: distilled, init: select, from: full, teacher: full}\n"
        "  - {name: random, init: scratch}\n"
        "  - {name: full, size: full, init: pretrained, train: {steps: 50}}\n")))
    assert [e.name for e in config.ordered()] == ["same", "random", "full", "distilled"]
    steps = {e.name: (config.steps_of(e), config.pipeline_steps(e)) for e in config.experiments}
    assert steps == {"same": (3050, 3050), "distilled": (3000, 3050), "random": (3000, 3000), "full": (50, 50)}
    assert json.loads(json.dumps(config.model_dump()))["experiments"][1]["from"] == "full"  # sweep.json keeps the key


def test_demo_preset_has_the_distillation_pipeline():
    config = load_sweep(preset_path("demo"))
    distilled = config.experiment("small-distilled")
    assert (distilled.from_, distilled.teacher, distilled.init) == ("full-pretrained", "full-pretrained", "calibrated")
    assert distilled.compensate and distilled.calibration == "data"
    assert config.pipeline_steps(distilled) == 2 * config.train.steps  # the teacher's fine-tuning counts
    same = config.experiment("small-calibrated-same-steps")
    assert config.steps_of(same) == config.pipeline_steps(distilled)


PIPELINE = """\
name: pipeline
source: {source}
target: {{d_model: 16, encoder_ffn_dim: 32, decoder_ffn_dim: 32}}
data: {data}
seeds: [0]
train: {{steps: 2, val_every: 2, workers: 0, log_every: 1}}
experiments:
  - {{name: distilled, size: small, init: select, from: full, teacher: full}}
  - {{name: full, size: full, init: pretrained}}
  - {{name: same-steps, size: small, init: select, same_steps_as: distilled}}
"""


def test_pipeline_sweep_runs_in_order_and_reports_the_whole_cost(tmp_path, detector_dir, rocks_dir, capsys):
    path = tmp_path / "pipeline.yaml"
    path.write_text(PIPELINE.format(source=detector_dir, data=rocks_dir))
    config = load_sweep(path)
    out = tmp_path / "results"
    assert main(["sweep", str(path), "--out", str(out), "--only", "distilled"]) == 2
    err = capsys.readouterr().err
    assert "--only distilled: it needs full's result" in err and "run --only full first" in err
    assert not out.exists()  # rejected before any work
    runs = run_sweep(config, out, progress=False)
    assert [r.parent.name for r in runs] == ["full", "distilled", "same-steps"]
    meta = json.loads((out / "models" / "distilled-seed0" / "interprune.json").read_text())
    assert meta["source"] == str(out / "runs" / "full" / "seed0" / "model")  # the fine-tuned model, shrunk
    summary = json.loads((out / "runs" / "distilled" / "seed0" / "summary.json").read_text())
    assert summary["teacher"]["model"] == str(out / "runs" / "full" / "seed0" / "model")
    assert summary["teacher"]["fine_tune_steps"] == 2 and summary["teacher"]["forward_calls"] == 2
    assert json.loads((out / "runs" / "same-steps" / "seed0" / "summary.json").read_text())["steps"] == 4
    write_report(out)
    rows = {r["experiment"]: r for r in csv.DictReader((out / "summary.csv").open())}
    assert [rows[n]["pipeline steps"] for n in ("full", "distilled", "same-steps")] == ["2", "4", "4"]
    assert rows["distilled"]["teacher s/step"] != "-" and rows["full"]["teacher s/step"] == "-"
    own = float(rows["distilled"]["train seconds"])
    assert float(rows["distilled"]["pipeline seconds"]) >= own + float(rows["full"]["train seconds"]) - 1
