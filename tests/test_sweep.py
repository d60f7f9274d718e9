from types import SimpleNamespace
import csv
import json
import re

import pytest
import torch

from interprune import InterpruneError
from interprune.cli import main
from interprune.sweep.config import SweepConfig, load_sweep, preset_path
from interprune.sweep.report import steps_to_reach, write_report
from interprune.sweep.results import Result, collect
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
  - {{name: small-random, size: small, init: scratch}}
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
        ("full", "pretrained"), ("full", "scratch"), ("full", "transfer"), ("small", "scratch"),
        ("small", "nearest-exact"), ("small", "area"), ("small", "max-pool"), ("small", "avg-pool")]
    assert (config.train.lr, config.train.lr_backbone, config.train.weight_decay, config.train.batch_size,
            config.train.val_batch_size, config.train.clip) == (1e-4, 1e-5, 1e-4, 4, 2, 0.1)


@pytest.mark.parametrize("text,message", [
    ("source: x\ntarget: {}\nexperimentz: []\n", r"sweep.yaml:3: experimentz: unknown key"),
    ("source: x\ntarget: {}\nexperiments:\n  - {name: a, init: bicubic}\n", r":4: experiments.0.init: unknown init 'bicubic'"),
    ("source: x\ntarget: {}\nexperiments:\n  - {name: a, init: random}\n",
     r":4: experiments.0.init: init 'random' is now called 'scratch'"),
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
    printed = capsys.readouterr().out
    assert "[7/8] [small-area seed 0] finished before: skipped" in printed
    assert "[1/8] [full-pretrained seed 0]" in printed and "[bench] full-pretrained: measuring" in printed
    assert re.search(r"\[2/8, about \d+ s left\] \[full-pretrained seed 1\]", printed)  # estimated from run 1
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
    # bit for bit the same start and settings: trained once, its results copied (and said so)
    assert tra["copied_from"] == str(out / "runs" / "full-pretrained" / "seed0") and pre["copied_from"] is None
    assert "[full-transfer seed 0] starts from exactly the weights of full-pretrained" in printed
    assert pre["start_fingerprint"] == tra["start_fingerprint"] != json.loads(
        (out / "runs" / "small-area" / "seed0" / "summary.json").read_text())["start_fingerprint"]
    report = write_report(out)
    text = report.read_text()
    assert "| small-area | small | area |" in text and "fig4_small_models.png" in text
    rows = list(csv.DictReader((out / "summary.csv").open()))
    assert [r["experiment"] for r in rows] == ["full-pretrained", "full-transfer", "small-random", "small-area"]
    assert all(r["seeds"] == "2" for r in rows)
    assert {p.name for p in (out / "figures").iterdir()} == {
        "fig2_training_time.png", "fig3_full_models.png", "fig4_small_models.png", "map50.png",
        "quality_vs_latency.png", "predictions.png"}
    assert "data:image/png;base64," in (out / "report.html").read_text()
    costs = {r["experiment"]: (float(r["latency ms"]), float(r["file MB"])) for r in rows}
    full = json.loads((out / "bench" / "full-pretrained.json").read_text())
    assert costs["full-pretrained"] == costs["full-transfer"] == (round(full["latency_ms"], 1), round(full["file_mb"], 1))
    assert costs["small-area"] == costs["small-random"] and costs["small-area"][1] < costs["full-pretrained"][1]
    assert "median CPU time for one input (image 3x64x64) at batch 1 on cpu (1 thread)" in text
    assert "### Predictions on validation images" in text
    assert all(int(step) == 0 for step, _ in [c[0] for r in collect(out)[1] for c in r.curves])  # curves start at 0


def test_steps_to_reach():
    curve = [(50, 3.0), (100, 2.5), (150, 2.0), (200, 2.1)]
    assert steps_to_reach(curve, 2.5) == 100 and steps_to_reach(curve, 1.0) is None


def test_report_on_a_folder_without_runs(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "not a sweep folder" in capsys.readouterr().err


def test_demo_preset_finds_the_shipped_source_and_source_overrides(tmp_path, detector_dir, monkeypatch):
    from interprune.demo import DEMO_SOURCE

    assert load_sweep(preset_path("demo")).source == str(DEMO_SOURCE)
    seen = {}
    monkeypatch.setattr("interprune.sweep.run.run_sweep",
                        lambda config, out, only=None, progress=True: seen.update(config=config))
    monkeypatch.setattr("interprune.sweep.report.write_report", lambda out: tmp_path / "report.md")
    monkeypatch.chdir(detector_dir.parent)
    assert main(["sweep", "--preset", "paper", "--source", detector_dir.name, "--data", "x", "--out", "r"]) == 0
    assert seen["config"].source == str(detector_dir) and seen["config"].train.steps == 3000


def test_sweep_progress_counts_runs_and_estimates_the_rest():
    from interprune.sweep.progress import SweepProgress

    now = [0.0]
    counter = SweepProgress(4, clock=lambda: now[0])
    assert counter.next(skipped=True) == "[1/4]"
    assert counter.next() == "[2/4]"  # nothing trained yet: no estimate
    now[0] = 30.0
    counter.done()
    assert counter.next() == "[3/4, about 60 s left]"  # this run and the next, 30 s each
    now[0] = 130.0
    counter.done()
    assert counter.next() == "[4/4, about 65 s left]"  # the mean of 30 s and 100 s


def test_the_picture_shows_the_best_models_and_random_init():
    from interprune.sweep.pictures import telling_models

    def result(name, size, init, map50, loss):
        return Result(name, size, init, summaries=[SimpleNamespace(map_50=map50, final_val_loss=loss)])

    results = [result("full-pretrained", "full", "pretrained", 0.5, 3.0), result("full-random", "full", "scratch", 0, 9),
               result("small-random", "small", "scratch", 0.0, 9.0), result("small-area", "small", "area", 0.2, 5.0),
               result("small-select", "small", "select", 0.2, 4.0), result("small-first", "small", "first", 0.1, 3.0)]
    config = SweepConfig(source="x", target={}, experiments=[{"name": r.name, "size": r.size, "init": r.init}
                                                              for r in results])
    assert [(t, r.name) for t, r in telling_models(config, results)] == [
        ("best full size", "full-pretrained"), ("best smaller", "small-select"), ("smaller, random init", "small-random")]


def test_the_html_report_escapes_names_sources_and_overrides():
    from interprune.sweep.report import _html

    config = SimpleNamespace(name="<script>alert(1)</script>", source="models/a&b", target={"note": "</code><i>"},
                             train=SimpleNamespace(steps=2), seeds=[0])
    page = _html(config, [{"experiment": "small<1>", "mAP": "0.5"}], [], [])
    assert "<script>" not in page and "<i>" not in page and "small<1>" not in page
    assert "<h1>&lt;script&gt;alert(1)&lt;/script&gt;</h1>" in page and "<code>models/a&amp;b</code>" in page
    assert "&lt;/code&gt;&lt;i&gt;" in page and "<td>small&lt;1&gt;</td>" in page
