import math
from types import SimpleNamespace

import pytest
import torch

from interprune.train.criterion import (DistillCriterion, DistillWeights, Teacher, TaskCriterion, box_terms,
                                        class_kl, foreground, match_queries, uses_no_object_class)


def logits(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("softmax", [True, False])
def test_class_kl_is_zero_for_equal_logits_and_positive_otherwise(softmax):
    t = logits(2, 5, 4)
    assert class_kl(t.clone(), t, 2.0, softmax).item() == pytest.approx(0.0, abs=1e-6)
    assert class_kl(logits(2, 5, 4, seed=1), t, 2.0, softmax).item() > 0.01


def test_class_kl_matches_the_formula_by_hand():
    s, t = torch.tensor([[0.0, 0.0]]), torch.tensor([[math.log(3.0), 0.0]])  # teacher p = (3/4, 1/4)
    expected = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    assert class_kl(s, t, 1.0, softmax=True).item() == pytest.approx(expected, rel=1e-5)
    # temperature T softens both sides (teacher p at T=2: softmax(log3/2, 0)) and the result is scaled by T**2
    p = torch.tensor([math.log(3.0) / 2, 0.0]).softmax(0)
    at_two = float((p * (p / 0.5).log()).sum()) * 4
    assert class_kl(s, t, 2.0, softmax=True).item() == pytest.approx(at_two, rel=1e-5)
    # sigmoid models: a Bernoulli per class, summed: teacher sigmoid(log 3) = 3/4 against 1/2, and 1/2 against 1/2
    assert class_kl(s, t, 1.0, softmax=False).item() == pytest.approx(expected, rel=1e-5)


def test_box_terms_by_hand():
    s = torch.tensor([[0.5, 0.5, 0.2, 0.2], [0.5, 0.5, 0.2, 0.2]])
    t = torch.tensor([[0.5, 0.5, 0.2, 0.2], [0.6, 0.5, 0.2, 0.2]])  # second box shifted by half its width
    l1, giou = box_terms(s, t)
    assert l1.item() == pytest.approx(0.05) and giou.item() > 0  # mean of 0 and 0.1
    # the shifted pair: IoU 1/3, enclosing box = union, so 1 - GIoU = 2/3; with weights (0, 1) only it counts
    l1, giou = box_terms(s, t, torch.tensor([0.0, 1.0]))
    assert l1.item() == pytest.approx(0.1) and giou.item() == pytest.approx(2 / 3, rel=1e-5)
    assert [v.item() for v in box_terms(t, t)] == pytest.approx([0.0, 0.0], abs=1e-5)


def test_foreground_and_class_layout():
    no_object = torch.tensor([[0.0, 0.0, 10.0]])  # softmax: the last class is "no object"
    assert foreground(no_object, True).item() < 1e-3 and foreground(torch.tensor([[10.0, -10.0]]), False).item() > 0.99
    assert uses_no_object_class(torch.zeros(1, 5, 4), num_labels=3)
    assert not uses_no_object_class(torch.zeros(1, 5, 3), num_labels=3)


def test_hungarian_matching_undoes_a_permutation():
    t_logits, t_boxes = logits(2, 6, 4) * 3, torch.rand(2, 6, 4, generator=torch.Generator().manual_seed(3)) * 0.5 + 0.2
    order = torch.tensor([3, 0, 5, 1, 4, 2])
    pairs = match_queries(t_logits[:, order], t_boxes[:, order], t_logits, t_boxes, softmax=True)
    for i, j in pairs:
        assert torch.equal(order[i], j)
    # fewer student queries than the teacher's: each gets its own teacher query
    pairs = match_queries(t_logits[:, order[:4]], t_boxes[:, order[:4]], t_logits, t_boxes, softmax=True)
    assert all(torch.equal(order[:4][i], j) for i, j in pairs)


class FakeDetector(torch.nn.Module):
    """Outputs fixed predictions; stands in for a teacher."""

    def __init__(self, out):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(1))
        self.out = out

    def forward(self, pixel_values, pixel_mask=None):
        return self.out


def outputs(cls, boxes, hidden=None, loss=None):
    b, q, _ = cls.shape
    hidden = torch.ones(b, q, 8) if hidden is None else hidden
    return SimpleNamespace(logits=cls, pred_boxes=boxes, last_hidden_state=hidden,
                           encoder_last_hidden_state=torch.ones(b, 7, hidden.shape[-1]), loss=loss,
                           loss_dict={"loss_ce": torch.tensor(0.5)} if loss is not None else None)


def test_distill_criterion_adds_weighted_terms_and_is_task_only_in_eval():
    cls, boxes = logits(2, 5, 4), torch.rand(2, 5, 4, generator=torch.Generator().manual_seed(4)) * 0.5 + 0.2
    teacher = Teacher(FakeDetector(outputs(cls, boxes)))
    crit = DistillCriterion(teacher, num_labels=3, weights=DistillWeights(classes=1, boxes=5, giou=2))
    batch = {"pixel_values": torch.zeros(2, 3, 8, 8), "pixel_mask": None, "labels": []}
    same = outputs(cls.clone(), boxes.clone(), loss=torch.tensor(1.5))
    loss, terms = crit(same, batch)  # a student that already agrees: only the task loss is left
    assert loss.item() == pytest.approx(1.5) and terms["task_loss"].item() == 1.5 and terms["loss_ce"].item() == 0.5
    assert abs(terms["distill_class"].item()) < 1e-6 and terms["distill_l1"].item() == 0
    other = outputs(logits(2, 5, 4, seed=9), boxes.flip(1), loss=torch.tensor(1.5))
    loss, terms = crit(other, batch)
    expected = 1.5 + terms["distill_class"] + 5 * terms["distill_l1"] + 2 * terms["distill_giou"]
    assert loss.item() == pytest.approx(expected.item()) and terms["distill_class"] > 0 and terms["distill_l1"] > 0
    assert teacher.calls == 2 and teacher.seconds > 0
    crit.eval()
    loss, terms = crit(other, batch)
    assert loss.item() == 1.5 and set(terms) == {"loss_ce"} and teacher.calls == 2  # validation: task loss only
    crit.train()
    loss, terms = crit(outputs(logits(2, 5, 4, seed=5), boxes), {"pixel_values": batch["pixel_values"]})  # unlabelled
    assert "loss_ce" not in terms and "task_loss" not in terms and loss.item() > 0


def test_feature_term_uses_kept_channels_or_a_learned_projection():
    cls, boxes = logits(1, 5, 4), torch.rand(1, 5, 4) * 0.5 + 0.2
    wide = torch.arange(8.0).expand(1, 5, 8)
    teacher = Teacher(FakeDetector(outputs(cls, boxes, hidden=wide)))
    kept = torch.tensor([0, 2, 4, 6])
    crit = DistillCriterion(teacher, 3, DistillWeights(features=1.0), kept_channels=kept)
    student = outputs(cls, boxes, hidden=wide[..., kept].clone())
    student.encoder_last_hidden_state = torch.ones(1, 7, 4)  # the teacher's encoder states are all ones too
    _, terms = crit(student, {"pixel_values": torch.zeros(1, 3, 8, 8)})
    assert terms["distill_features"].item() == 0 and not list(crit.parameters())
    learned = DistillCriterion(teacher, 3, DistillWeights(features=1.0), widths=(4, 8))
    assert sorted(n for n, _ in learned.named_parameters()) == [
        "projections.decoder.bias", "projections.decoder.weight", "projections.encoder.bias", "projections.encoder.weight"]
    _, terms = learned(student, {"pixel_values": torch.zeros(1, 3, 8, 8)})
    assert terms["distill_features"].item() > 0


def test_teacher_is_frozen_in_eval_mode_and_not_a_child():
    det = FakeDetector(None).train()
    teacher = Teacher(det)
    crit = DistillCriterion(teacher, 3)
    assert not det.training and not det.w.requires_grad
    crit.train()
    assert not det.training and list(crit.state_dict()) == [] and list(crit.parameters()) == []


def test_task_criterion_passes_the_models_loss_through():
    loss, terms = TaskCriterion()(outputs(torch.zeros(1, 2, 3), torch.zeros(1, 2, 4), loss=torch.tensor(2.0)), {})
    assert loss.item() == 2.0 and terms == {"loss_ce": torch.tensor(0.5)}
