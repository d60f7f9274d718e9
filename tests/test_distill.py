import json

import pytest
import torch
from transformers import AutoModelForObjectDetection, DetrImageProcessor

from interprune import InterpruneError
from interprune.cli import main
from interprune.data.rocks import NAMES
from interprune.hf.models import save
from interprune.weights.shrink import shrink
from interprune.train.distill import make_distillation as run_make
from interprune.hf.models import load_detector
from interprune.train.run import train
from interprune.train.settings import TrainSettings

FAST = dict(steps=3, val_every=3, workers=0, log_every=1)
SMALL = {"d_model": 16, "encoder_ffn_dim": 32, "decoder_ffn_dim": 32}


@pytest.fixture(scope="module")
def teacher_run(detector_dir, rocks_dir, tmp_path_factory):
    """A fine-tuned full model as 'interprune train' leaves it (its summary beside its model folder)."""
    out = tmp_path_factory.mktemp("teacher") / "run"
    train(detector_dir, rocks_dir, out, TrainSettings(steps=2, val_every=2, workers=0), progress=False)
    return out


@pytest.fixture(scope="module")
def student_dir(teacher_run, tmp_path_factory):
    """The teacher shrunk to half width, as a sweep's 'from:' makes it."""
    model, report = shrink(str(teacher_run / "model"), SMALL, "select")
    out = tmp_path_factory.mktemp("student") / "small"
    save(model, out, report=report, source=str(teacher_run / "model"),
         processor=DetrImageProcessor(size={"shortest_edge": 64, "longest_edge": 96}))
    return out


def test_train_with_a_teacher_keeps_it_frozen_and_out_of_the_checkpoint(teacher_run, student_dir, rocks_dir, tmp_path,
                                                                        monkeypatch):
    import interprune.train.run as run

    made = []
    monkeypatch.setattr(run, "make_distillation", lambda *a, **k: made.append(run_make(*a, **k)) or made[-1])
    teacher_before = AutoModelForObjectDetection.from_pretrained(teacher_run / "model").state_dict()
    out = tmp_path / "run"
    settings = TrainSettings(**FAST, teacher=str(teacher_run / "model"), distill_features=1.0)
    summary = train(student_dir, rocks_dir, out, settings, progress=False)
    t = summary.teacher
    assert t.forward_calls == 3 and t.forward_seconds > 0 and t.seconds_per_step == pytest.approx(
        t.forward_seconds / 3, abs=1e-3)  # both rounded
    teacher_summary = json.loads((teacher_run / "summary.json").read_text())
    assert (t.fine_tune_steps, t.fine_tune_seconds) == (2, teacher_summary["seconds"])
    state = torch.load(out / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    assert state and all(k.startswith("model.") for k in state)  # the student alone
    # shrunk from this teacher, the student's residual channels are the plan's kept teacher channels: the feature
    # term compares those directly, with no learned projection to carry in the checkpoint
    assert made[0].kept_channels is not None and len(made[0].kept_channels) == SMALL["d_model"]
    saved = AutoModelForObjectDetection.from_pretrained(out / "model").state_dict()
    assert saved["model.input_projection.weight"].shape[0] == 16  # the student, alone
    teacher = made[0].teacher.model  # the one that ran: still in eval mode, without gradients, unchanged
    assert not teacher.training and not any(p.requires_grad or p.grad is not None for p in teacher.parameters())
    assert all(torch.equal(v, teacher_before[k]) for k, v in teacher.state_dict().items())
    header = (out / "metrics.csv").read_text().splitlines()[0]
    assert "train_distill_class" in header and "train_task_loss" in header and "val_distill" not in header


def test_teacher_time_is_measured_and_training_is_not_touched_without_one(detector_dir, rocks_dir, tmp_path):
    summary = train(detector_dir, rocks_dir, tmp_path / "plain", TrainSettings(**FAST), progress=False)
    assert summary.teacher is None


def test_cli_train_with_teacher_and_unlabelled_images(teacher_run, student_dir, rocks_dir, tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["train", "--model", str(student_dir), "--data", str(rocks_dir), "--out", str(out), "--steps", "2",
                 "--val-every", "2", "--log-every", "1", "--workers", "0", "--teacher", str(teacher_run / "model"),
                 "--distill-data", str(rocks_dir / "valid"), "--distill-temperature", "3"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["settings"]["distill_temperature"] == 3.0
    assert summary["teacher"]["forward_calls"] == 4  # a labelled and an unlabelled batch each step
    header = (out / "metrics.csv").read_text().splitlines()[0]
    assert "train_unlabelled_distill_class" in header


def test_bad_distillation_input_is_rejected_before_work(teacher_run, detector_dir, rocks_dir, tmp_path, capsys):
    assert main(["train", "--model", str(detector_dir), "--data", str(rocks_dir), "--out", str(tmp_path / "a"),
                 "--distill-data", str(rocks_dir / "valid")]) == 2
    assert "--distill-data needs --teacher" in capsys.readouterr().err
    # the shipped tiny detector knows other classes than the rocks dataset: no use as a teacher
    with pytest.raises(InterpruneError, match="detects .* the dataset has"):
        train(detector_dir, rocks_dir, tmp_path / "b", TrainSettings(**FAST, teacher=str(detector_dir)))
    (tmp_path / "empty").mkdir()
    with pytest.raises(InterpruneError, match="no images"):
        train(detector_dir, rocks_dir, tmp_path / "c", TrainSettings(**FAST, teacher=str(teacher_run / "model"),
                                                                     distill_data=str(tmp_path / "empty")))
    assert not any((tmp_path / n).exists() for n in "abc")


def test_load_detector_for_a_teacher_and_student_of_other_query_counts(teacher_run, rocks_dir):
    from interprune.train.criterion import DistillCriterion, Teacher

    teacher = Teacher(load_detector(teacher_run / "model", NAMES))
    model, _ = shrink(str(teacher_run / "model"), {**SMALL, "num_queries": 6}, "select")
    model.train()
    crit = DistillCriterion(teacher, len(NAMES))
    pixels = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    out = model(pixel_values=pixels)
    loss, terms = crit(out, {"pixel_values": pixels})  # 6 student queries matched to 6 of the teacher's 10
    assert loss.requires_grad and terms["distill_class"] > 0 and torch.isfinite(loss)
    loss.backward()
    assert model.class_labels_classifier.weight.grad.abs().sum() > 0


def test_kept_channels_come_from_the_students_plan_when_shrunk_from_this_teacher(tmp_path):
    from interprune.train.distill import kept_channels

    teacher, student = tmp_path / "teacher", tmp_path / "student"
    teacher.mkdir(), student.mkdir()
    (student / "interprune.json").write_text(json.dumps({"source": str(teacher), "choices": {"residual": [0, 2, 4]}}))
    assert kept_channels(student, teacher).tolist() == [0, 2, 4]
    assert kept_channels(student, tmp_path / "other") is None  # another teacher: its channels mean nothing here
    (student / "interprune.json").write_text(json.dumps({"source": str(teacher), "choices": {"residual": [0, -1]}}))
    assert kept_channels(student, teacher) is None
    assert kept_channels(tmp_path / "nothing", teacher) is None
