import json
import math
import os
import shutil
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
from transformers import AutoModelForObjectDetection, BertConfig, BertModel, DetrImageProcessor

from interprune import InterpruneError
from interprune.cli import main
from interprune.data.rocks import NAMES
from interprune.train.module import DetectionModule
from interprune.hf.models import load_detector
from interprune.train.metrics import read_metrics
from interprune.train.run import train
from interprune.train.settings import TrainSettings
from interprune.train.summary import RunSummary

FAST = dict(steps=4, val_every=2, workers=0, log_every=1)


def test_run_folder_summary_metrics_and_model(detector_dir, rocks_dir, tmp_path):
    out = tmp_path / "run"
    summary = train(detector_dir, rocks_dir, out, TrainSettings(**FAST), progress=False)
    assert summary.steps == 4 and summary.seconds > 0 and summary.segments == 1
    assert summary.final_val_loss > 0 and summary.best_val_loss <= summary.final_val_loss
    assert 0.0 <= summary.map_50 <= 1.0 and summary.parameters == summary.trainable_parameters
    assert RunSummary.read(out) == summary
    rows = read_metrics(out)
    assert [int(r["step"]) for r in rows if "val_loss" in r][:3] == [0, 2, 4]  # before training, after steps 2 and 4
    assert any("train_loss" in r and "train_loss_giou" in r and "wall_time" in r for r in rows)
    assert {r.get("lr-AdamW/pg1") for r in rows} >= {1e-4} and {r.get("lr-AdamW/pg2") for r in rows} >= {1e-5}
    assert (out / "checkpoints" / "last.ckpt").is_file() and any((out / "tensorboard").iterdir())
    model, info = AutoModelForObjectDetection.from_pretrained(out / "model", output_loading_info=True)
    assert not info["missing_keys"] and list(model.config.id2label.values()) == NAMES
    assert (out / "model" / "preprocessor_config.json").is_file()


def test_same_seed_same_metrics_and_resume(detector_dir, rocks_dir, tmp_path):
    a = train(detector_dir, rocks_dir, tmp_path / "a", TrainSettings(**FAST), progress=False)
    b = train(detector_dir, rocks_dir, tmp_path / "b", TrainSettings(**FAST), progress=False)
    assert (a.final_val_loss, a.map) == (b.final_val_loss, b.map)
    c = train(detector_dir, rocks_dir, tmp_path / "b", TrainSettings(**{**FAST, "steps": 6}), resume=True,
              progress=False)
    assert c.steps == 6 and c.segments == 2
    val_steps = [int(r["step"]) for r in read_metrics(tmp_path / "b") if "val_loss" in r]
    assert val_steps == [0, 2, 4, 6]  # every step once: the first part kept, no second step-0 validation
    with pytest.raises(InterpruneError, match="already holds a run"):
        train(detector_dir, rocks_dir, tmp_path / "a", TrainSettings(**FAST))


def test_head_is_recreated_for_the_datasets_classes_and_the_rest_kept(detector_dir):
    source = AutoModelForObjectDetection.from_pretrained(detector_dir)
    model = load_detector(detector_dir, NAMES)
    assert model.class_labels_classifier.out_features == len(NAMES) + 1
    src = source.state_dict()
    for name, value in model.state_dict().items():
        if "class_labels_classifier" not in name:
            assert torch.equal(value, src[name]), name
    same = load_detector(detector_dir, [source.config.id2label[i] for i in range(3)])
    assert torch.equal(same.class_labels_classifier.weight, source.class_labels_classifier.weight)
    renamed = load_detector(detector_dir, ["x", "y", "z"])  # same count, other classes: a fresh head
    assert not torch.equal(renamed.class_labels_classifier.weight, source.class_labels_classifier.weight)
    assert renamed.class_labels_classifier.bias.abs().max() == 0 and list(renamed.config.id2label.values()) == ["x", "y", "z"]


def test_optimizer_uses_the_papers_two_learning_rates(detector_dir):
    module = DetectionModule(load_detector(detector_dir, NAMES), DetrImageProcessor())
    groups = module.configure_optimizers().param_groups
    assert [g["lr"] for g in groups] == [1e-4, 1e-5] and all(g["weight_decay"] == 1e-4 for g in groups)
    backbone = sum(p.numel() for p in module.model.model.backbone.parameters())
    assert sum(p.numel() for p in groups[1]["params"]) == backbone


def test_map_is_one_for_perfect_predictions():
    processor = DetrImageProcessor()
    module = DetectionModule(torch.nn.Linear(1, 1), processor)
    boxes = torch.tensor([[0.5, 0.5, 0.2, 0.4], [0.2, 0.3, 0.1, 0.1]])
    logits = torch.full((1, 5, 4), -10.0)
    logits[0, 0, 2], logits[0, 1, 0] = 10.0, 10.0
    pred_boxes = torch.cat([boxes, torch.rand(3, 4) * 0.1 + 0.1])[None]
    labels = [{"boxes": boxes, "class_labels": torch.tensor([2, 0]), "size": torch.tensor([60, 80])}]
    module._update_map(SimpleNamespace(logits=logits, pred_boxes=pred_boxes), labels)
    result = module.map_metric.compute()
    assert float(result["map"]) == pytest.approx(1.0) and float(result["map_50"]) == pytest.approx(1.0)


def test_non_finite_loss_stops_with_the_step_and_keeps_the_checkpoint(detector_dir, rocks_dir, tmp_path, monkeypatch):
    original = DetectionModule.common_step

    def poisoned(self, batch):
        loss, terms, outputs = original(self, batch)
        return (loss * float("nan") if self.training and self.global_step >= 3 else loss), terms, outputs

    monkeypatch.setattr(DetectionModule, "common_step", poisoned)
    with pytest.raises(InterpruneError, match=r"loss became nan at step 3; the last good checkpoint is .*last.ckpt"):
        train(detector_dir, rocks_dir, tmp_path / "nan", TrainSettings(**{**FAST, "steps": 8}), progress=False)
    assert (tmp_path / "nan" / "checkpoints" / "last.ckpt").is_file()


def test_bad_input(detector_dir, rocks_dir, tmp_path, capsys):
    BertModel(BertConfig(hidden_size=32, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                         vocab_size=50)).save_pretrained(tmp_path / "bert")
    with pytest.raises(InterpruneError, match="is a bert model, not an object-detection model"):
        train(tmp_path / "bert", rocks_dir, tmp_path / "x")
    assert main(["train", "--model", str(detector_dir), "--data", str(rocks_dir), "--out", str(tmp_path / "y"),
                 "--steps", "0"]) == 2
    assert "--steps: Input should be greater than 0" in capsys.readouterr().err
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_cli_train_then_predict(detector_dir, rocks_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--model", str(detector_dir), "--data", str(rocks_dir), "--out", str(out), "--steps", "2",
                 "--val-every", "2", "--workers", "0", "--no-augment"]) == 0
    assert json.loads((out / "summary.json").read_text())["settings"]["augment"] is False
    assert main(["predict", "--model", str(out / "model"), "--images", str(rocks_dir / "valid"),
                 "--out", str(tmp_path / "pred"), "--threshold", "0.0"]) == 0
    assert sorted(p.suffix for p in (tmp_path / "pred").iterdir()) == [".png"] * 3
    assert "30 detections on 3 images" in capsys.readouterr().out  # threshold 0: every one of 10 queries x 3 images


def test_heads_in_a_list_and_bias_priors_are_recreated_as_the_model_initialises_them(tmp_path):
    from interprune.hf.models import head_tensors, recreate_head

    from .families import FAMILIES

    config_cls, fields, model_cls, *_ = FAMILIES["rt_detr"]
    model = model_cls(config_cls(**fields))
    names = head_tensors(model.config)
    assert "model.decoder.class_embed.1.bias" in names and "model.enc_score_head.bias" in names
    with torch.no_grad():
        for name in names:
            model.state_dict()[name].fill_(5.0)
    recreate_head(model)
    prior = -math.log((1 - 1 / 4) / (1 / 4))  # focal-loss prior for 3 classes + no-object
    assert torch.allclose(model.model.decoder.class_embed[1].bias, torch.full((3,), prior))
    assert model.model.decoder.class_embed[0].weight.std() < 1.0  # fresh, not the 5.0 it held
def without_wall_time(rows):
    return [{k: v for k, v in r.items() if k != "wall_time"} for r in rows]


class Stop(Exception):
    """Stands for a kill: the process ends at once, after the last checkpoint."""


def test_a_run_stopped_twice_then_resumed_equals_an_uninterrupted_one(detector_dir, rocks_dir, tmp_path, monkeypatch):
    settings = TrainSettings(steps=7, val_every=3, workers=0, log_every=1)  # dropout and augmentation draw randoms
    whole = train(detector_dir, rocks_dir, tmp_path / "whole", settings, progress=False)
    original = DetectionModule.training_step
    for stop_at in (5, 6):  # after the checkpoint at step 3 (rows 3-4 redone), then at 6 (resumed from 6)
        def step(self, batch, batch_idx, stop_at=stop_at):
            if self.global_step == stop_at:
                raise Stop
            return original(self, batch, batch_idx)

        monkeypatch.setattr(DetectionModule, "training_step", step)
        with pytest.raises(Stop):
            train(detector_dir, rocks_dir, tmp_path / "parts", settings, resume=True, progress=False)
    monkeypatch.setattr(DetectionModule, "training_step", original)
    parts = train(detector_dir, rocks_dir, tmp_path / "parts", settings, resume=True, progress=False)
    rows = read_metrics(tmp_path / "parts")
    assert [int(r["step"]) for r in rows] == list(range(7))  # every step exactly once
    assert without_wall_time(rows) == without_wall_time(read_metrics(tmp_path / "whole"))
    assert (parts.final_val_loss, parts.best_val_loss, parts.map, parts.map_per_class) == (
        whole.final_val_loss, whole.best_val_loss, whole.map, whole.map_per_class)
    assert parts.segments == 3 and parts.seconds > 0
    assert [r["wall_time"] for r in rows] == sorted(r["wall_time"] for r in rows)  # continues across segments


def test_a_corrupt_checkpoint_is_one_line_and_nothing_is_touched(detector_dir, rocks_dir, tmp_path, capsys):
    out = tmp_path / "run"
    train(detector_dir, rocks_dir, out, TrainSettings(**FAST), progress=False)
    ckpt = out / "checkpoints" / "last.ckpt"
    ckpt.write_bytes(ckpt.read_bytes()[:1000])  # cut short
    before = (out / "metrics.csv").read_text()
    args = ["train", "--model", str(detector_dir), "--data", str(rocks_dir), "--out", str(out), "--steps", "6",
            "--val-every", "2", "--workers", "0", "--resume"]
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{ckpt} is cut short or not a checkpoint" in err
    assert (out / "metrics.csv").read_text() == before and ckpt.stat().st_size == 1000


@pytest.mark.parametrize("flags,message", [
    (["--accelerator", "gpu"], "--accelerator gpu: "),
    (["--precision", "banana"], "--precision banana: Precision 'banana' is invalid"),
    (["--strategy", "nonsense"], "--strategy nonsense: You selected an invalid strategy name"),
])
def test_bad_trainer_settings_fail_before_any_loading(tmp_path, capsys, flags, message):
    args = ["train", "--model", str(tmp_path / "no-model"), "--data", str(tmp_path / "no-data"),
            "--out", str(tmp_path / "run")]
    assert main(args + flags) == 2  # the missing model and data are never reached
    err = capsys.readouterr().err
    assert err.startswith("interprune: error: " + message) and err.count("\n") == 1
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_two_processes_over_gloo_train_validate_and_write_one_summary(detector_dir, rocks_dir, tmp_path):
    out = tmp_path / "ddp"
    run = subprocess.run(
        [sys.executable, "-m", "interprune", "train", "--model", str(detector_dir), "--data", str(rocks_dir),
         "--out", str(out), "--steps", "4", "--val-every", "2", "--workers", "0", "--log-every", "1",
         "--devices", "2", "--accelerator", "cpu", "--map-every-val"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stderr[-2000:]
    assert "Initializing distributed: GLOBAL_RANK: 1, MEMBER: 2/2" in run.stderr
    assert run.stdout.count("steps 4,") == 1  # one report, from the first process
    summary = RunSummary.read(out)
    assert summary.steps == 4 and summary.final_val_loss > 0 and 0 <= summary.map_50 <= 1
    rows = read_metrics(out)
    assert [int(r["step"]) for r in rows] == [0, 1, 2, 3, 4] and sum("map_50" in r for r in rows) == 3  # val at 0, 2, 4
    assert (out / "model" / "model.safetensors").is_file()


def test_predict_checks_every_image_before_writing_anything(detector_dir, rocks_dir, tmp_path):
    from interprune.predict import predict

    images = tmp_path / "images"
    shutil.copytree(rocks_dir / "valid", images)
    broken = sorted(images.glob("*.jpg"))[-1]
    broken.write_bytes(broken.read_bytes()[:300])
    with pytest.raises(InterpruneError, match=f"{broken.name}: image unreadable: .*--images"):
        predict(detector_dir, images, tmp_path / "pred")
    assert not (tmp_path / "pred").exists()
def test_lr_factor_warms_up_then_decays():
    from interprune.train.schedule import lr_factor

    assert [lr_factor(s, 10) for s in (0, 5, 9)] == [1.0, 1.0, 1.0]  # the paper's constant rate
    assert [lr_factor(s, 10, warmup=3) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    cosine = [lr_factor(s, 10, warmup=2, decay="cosine") for s in range(10)]
    assert cosine[2] == 1.0 and cosine[6] == pytest.approx(0.5) and 0 < cosine[9] < cosine[8] < cosine[3]
    linear = [lr_factor(s, 10, warmup=0, decay="linear", end=0.1) for s in range(10)]
    assert linear[0] == 1.0 and linear[5] == pytest.approx(0.55) and linear[9] == pytest.approx(0.19)


def test_scheduler_steps_every_step_and_constant_keeps_a_bare_optimizer(detector_dir):
    module = DetectionModule(load_detector(detector_dir, NAMES), DetrImageProcessor(), warmup_steps=4,
                             lr_decay="cosine")
    module._trainer = SimpleNamespace(max_steps=20)
    configured = module.configure_optimizers()
    schedule = configured["lr_scheduler"]
    assert schedule["interval"] == "step"
    assert [g["lr"] for g in configured["optimizer"].param_groups] == pytest.approx([2e-5, 2e-6])  # 1/(4+1) of each
    with pytest.raises(ValueError, match="Input should be 'constant', 'cosine' or 'linear'"):
        TrainSettings(lr_decay="step")
    assert DetectionModule(module.model, DetrImageProcessor()).configure_optimizers().__class__ is torch.optim.AdamW


def test_validation_at_step_0_progress_by_steps_and_schedule(detector_dir, rocks_dir, tmp_path, capsys):
    import lightning as L

    from interprune.data import make_loaders, open_dataset

    settings = TrainSettings(**{**FAST, "warmup_steps": 2, "lr_decay": "linear"})
    train(detector_dir, rocks_dir, tmp_path / "run", settings, progress=True)
    printed = capsys.readouterr().out.replace("\r", "\n")
    assert "step 4/4" in printed and "step/s" in printed and "Epoch" not in printed
    rows = read_metrics(tmp_path / "run")
    assert [r["lr-AdamW/pg1"] for r in rows if "lr-AdamW/pg1" in r] == pytest.approx([1e-4 / 3, 2e-4 / 3, 1e-4, 5e-5])
    first = next(r for r in rows if "val_loss" in r)
    assert first["step"] == 0  # what the initialisation inherited, before any training:
    data = open_dataset(rocks_dir, seed=0)
    processor = DetrImageProcessor.from_pretrained(detector_dir)
    L.seed_everything(0, verbose=False)
    module = DetectionModule(load_detector(detector_dir, data.names, 0), processor)
    _, loader = make_loaders(data, processor, val_batch_size=FAST.get("val_batch_size", 2), augment=False, workers=0)
    trainer = L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
    assert trainer.validate(module, loader, verbose=False)[0]["val_loss"] == pytest.approx(first["val_loss"], rel=1e-5)
