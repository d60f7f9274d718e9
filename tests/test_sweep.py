import csv
import json

import pytest
import torch

from interprune import InterpruneError
from interprune.cli import main
from interprune.sweep.config import load_sweep, preset_path
from interprune.sweep.report import steps_to_reach, write_report
from interprune.sweep.run import run_sweep


SWEEP = """\
name: tiny
source: {source}
target: {{d_model: 16, encoder_ffn_dim: 32, decoder_ffn_dim: 32}}
data: {data}
seeds: [0, 1]
train: {{steps: 2, val_every: 1, workers: 0, log_every: 1}}
experiments:
  - {{name: full-pretrained, size: full, init: pretrained}}
  - {{name: full-transfer, size: full, init: transfer}}
  - {{name: small-random, size: small, init: random}}
  - {{name: small-area, size: small, init: area}}
"""


def write(tmp_path, text, name="sweep.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_paper_preset_is_the_papers_eight_experiments():
    config = load_sweep(preset_path("paper"))
    assert config.source == "facebook/detr-resnet-50" and config.train.steps == 3000
    assert config.target == {"d_model": 128, "encoder_ffn_dim": 1024, "decoder_ffn_dim": 1024}
    assert [(e.size, e.init) for e in config.experiments] == [
        ("full", "pretrained"), ("full", "random"), ("full", "transfer"), ("small", "random"),
        ("small", "nearest-exact"), ("small", "area"), ("small", "max-pool"), ("small", "avg-pool")]
    assert (config.train.lr, config.train.lr_backbone, config.train.weight_decay, config.train.batch_size,
            config.train.val_batch_size, config.train.clip) == (1e-4, 1e-5, 1e-4, 4, 2, 0.1)


@pytest.mark.parametrize("text,message", [
    ("source: x\ntarget: {}\nexperimentz: []\n", r"sweep.yaml:3: experimentz: unknown key"),
    ("source: x\ntarget: {}\nexperiments:\n  - {name: a, init: bicubic}\n", r":4: experiments.0.init: unknown init 'bicubic'"),
    ("source: x\ntarget: {}\nexperiments:\n  - {name: a, init: area}\n  - {name: b, size: small, init: transfer}\n",
     r":5: experiments.1: init 'transfer' keeps the source's shape, so it needs size: full"),
    ("source: x\ntarget: {}\ntrain:\n  steps: 0\nexperiments:\n  - {name: a, init: area}\n", r":4: train.steps: Input should be greater than 0"),
    ("source: x\ntarget: {}\nexperiments:\n  - {name: a, init: area}\n  - {name: a, init: select}\n", "unique; repeated: a"),
    ("source: [unclosed\n", "not valid YAML"),
])
def test_bad_sweeps_are_rejected_with_the_line(tmp_path, text, message):
    with pytest.raises(InterpruneError, match=message):
        load_sweep(write(tmp_path, text))


def test_unknown_preset_and_unbuildable_target(tmp_path, detector_dir, rocks_dir, capsys):
    assert main(["sweep", "--preset", "nope", "--out", str(tmp_path / "r")]) == 2
    assert "no preset named 'nope'; presets: demo, paper" in capsys.readouterr().err
    bad = SWEEP.format(source=detector_dir, data=rocks_dir).replace("d_model: 16", "d_model: 18")
    assert main(["sweep", str(write(tmp_path, bad)), "--out", str(tmp_path / "r")]) == 2
    assert "target: hidden size 18 is not divisible" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_sweep_runs_skips_finished_runs_and_reports(tmp_path, detector_dir, rocks_dir, capsys):
    config = load_sweep(write(tmp_path, SWEEP.format(source=detector_dir, data=rocks_dir)))
    out = tmp_path / "results"
    runs = run_sweep(config, out, only="small-area", progress=False)
    assert [r.relative_to(out).as_posix() for r in runs] == ["runs/small-area/seed0", "runs/small-area/seed1"]
    meta = json.loads((out / "models" / "small-area-seed0" / "interprune.json").read_text())
    assert meta["method"] == "area" and meta["counts"]["resampled"] > 50
    assert run_sweep(config, out, progress=False)  # the rest; small-area is skipped
    assert "[small-area seed 0] finished before: skipped" in capsys.readouterr().out
    random_meta = json.loads((out / "models" / "small-random-seed0" / "interprune.json").read_text())
    actions = {t["name"]: t["action"] for t in random_meta["tensors"]}
    assert all(a == "copied" for n, a in actions.items() if n.startswith("model.backbone."))
    assert all(a == "initialised" for n, a in actions.items() if n.startswith("model.encoder."))
    from transformers import AutoModelForObjectDetection

    source = AutoModelForObjectDetection.from_pretrained(detector_dir).state_dict()
    copied = AutoModelForObjectDetection.from_pretrained(out / "models" / "full-transfer-seed0").state_dict()
    assert all(torch.equal(copied[k], v) for k, v in source.items())
    pre = json.loads((out / "runs" / "full-pretrained" / "seed0" / "summary.json").read_text())
    tra = json.loads((out / "runs" / "full-transfer" / "seed0" / "summary.json").read_text())
    assert pre["final_val_loss"] == tra["final_val_loss"]  # unlike the paper's, transfer is the pretrained model
    report = write_report(out)
    text = report.read_text()
    assert "| small-area | small | area |" in text and "fig4_small_models.png" in text
    rows = list(csv.DictReader((out / "summary.csv").open()))
    assert [r["experiment"] for r in rows] == ["full-pretrained", "full-transfer", "small-random", "small-area"]
    assert all(r["seeds"] == "2" for r in rows)
    assert {p.name for p in (out / "figures").iterdir()} == {
        "fig2_training_time.png", "fig3_full_models.png", "fig4_small_models.png", "map50.png"}
    assert "data:image/png;base64," in (out / "report.html").read_text()


def test_steps_to_reach():
    curve = [(50, 3.0), (100, 2.5), (150, 2.0), (200, 2.1)]
    assert steps_to_reach(curve, 2.5) == 100 and steps_to_reach(curve, 1.0) is None


def test_report_on_a_folder_without_runs(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "not a sweep folder" in capsys.readouterr().err
