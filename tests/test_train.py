import json
import math
from types import SimpleNamespace

import pytest
import torch
from transformers import AutoModelForObjectDetection, BertConfig, BertModel, DetrImageProcessor

from interprune import InterpruneError
from interprune.cli import main
from interprune.data.rocks import NAMES
from interprune.train.module import DetectionModule
from interprune.train.run import load_detector, read_metrics, train
from interprune.train.settings import TrainSettings

FAST = dict(steps=4, val_every=2, workers=0, log_every=1)


def test_run_folder_summary_metrics_and_model(detector_dir, rocks_dir, tmp_path):
    out = tmp_path / "run"
    summary = train(detector_dir, rocks_dir, out, TrainSettings(**FAST), progress=False)
    assert summary["steps"] == 4 and summary["seconds"] > 0
    assert summary["final_val_loss"] > 0 and summary["best_val_loss"] <= summary["final_val_loss"]
    assert 0.0 <= summary["map_50"] <= 1.0 and summary["parameters"] == summary["trainable_parameters"]
    assert json.loads((out / "summary.json").read_text()) == summary
    rows = read_metrics(out)
    assert [int(r["step"]) for r in rows if "val_loss" in r][:2] == [1, 3]  # validations after steps 2 and 4
    assert any("train_loss" in r and "train_loss_giou" in r and "wall_time" in r for r in rows)
    assert {r.get("lr-AdamW/pg1") for r in rows} >= {1e-4} and {r.get("lr-AdamW/pg2") for r in rows} >= {1e-5}
    assert (out / "checkpoints" / "last.ckpt").is_file() and any((out / "tensorboard").iterdir())
    model, info = AutoModelForObjectDetection.from_pretrained(out / "model", output_loading_info=True)
    assert not info["missing_keys"] and list(model.config.id2label.values()) == NAMES
    assert (out / "model" / "preprocessor_config.json").is_file()


def test_same_seed_same_metrics_and_resume(detector_dir, rocks_dir, tmp_path):
    a = train(detector_dir, rocks_dir, tmp_path / "a", TrainSettings(**FAST), progress=False)
    b = train(detector_dir, rocks_dir, tmp_path / "b", TrainSettings(**FAST), progress=False)
    assert (a["final_val_loss"], a["map"]) == (b["final_val_loss"], b["map"])
    c = train(detector_dir, rocks_dir, tmp_path / "b", TrainSettings(**{**FAST, "steps": 6}), resume=True,
              progress=False)
    assert c["steps"] == 6
    val_steps = [int(r["step"]) for r in read_metrics(tmp_path / "b") if "val_loss" in r]
    assert val_steps[:3] == [1, 3, 5]  # the resumed run's table keeps its first part
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
    from interprune.models import head_tensors, recreate_head

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
