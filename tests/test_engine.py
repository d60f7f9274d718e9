"""The sequential engine reproduces the one-batch recipe (``tests/data/engine_reference.json``, written
by the implementation that ran every calibration example in one batch) in any mini-batch size."""

import json

import pytest
import torch

from .engine_cases import REFERENCE, cases, run_case

REF = json.loads(REFERENCE.read_text())
# One refit the one-batch implementation could not pin: the box head's last layer was fitted to source
# outputs the model had already changed in place (it adds the reference points to them); the engine records
# them before that.
UNPINNED = ("bbox_predictor.layers.2.",)


def assert_same(found: dict, expected: dict, rel: float = 2e-3) -> None:
    assert found["choices"] == expected["choices"]
    assert found["preserved"] == expected["preserved"]
    assert found["tensors"].keys() == expected["tensors"].keys()
    for name, (shape, total, square, weighted) in expected["tensors"].items():
        got = found["tensors"][name]
        assert got[0] == shape, name
        if name.startswith(UNPINNED):
            continue
        scale = max(abs(square) ** 0.5, 1e-6)
        for a, b in zip(got[1:], (total, square, weighted)):
            assert abs(a - b) <= rel * (scale if b is not square else max(abs(square), 1e-6)), (name, a, b)


@pytest.mark.parametrize("name", list(cases()))
@pytest.mark.parametrize("batch", [None, 1])
def test_mini_batches_give_the_one_batch_model(name, batch):
    assert_same(run_case(name, calibration_batch=batch), REF[name])


def test_a_short_calibration_file_is_used_as_it_is_with_a_warning(tmp_path, capsys):
    from transformers import BertTokenizer

    from interprune.preserve.calibration import calibration_inputs

    (tmp_path / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "b", "c"]))
    text = tmp_path / "calib.txt"
    text.write_text("a b c\nb c a\nc a b\n")
    inputs = calibration_inputs(text, BertTokenizer(str(tmp_path / "vocab.txt")), count=8)
    assert inputs["input_ids"].shape[0] == 3
    assert "has 3 examples, fewer than the 8 asked for; using all 3" in capsys.readouterr().err


def test_spilled_boundaries_give_the_same_model():
    """A budget of one boundary sends the others to disk; the model is the same."""
    from interprune.weights.shrink import shrink

    from .engine_cases import fingerprint, text_ids, tiny_qwen

    overrides = {"hidden_size": 16, "intermediate_size": 32}
    options = dict(method="calibrated", compensate=True, calibration=text_ids(), calibration_batch=2)
    a = fingerprint(*shrink(tiny_qwen(), overrides, **options))
    b = fingerprint(*shrink(tiny_qwen(), overrides, budget=2560, **options))
    assert a == b


def test_the_default_mini_batch_holds_at_most_two_million_pixels():
    from interprune.preserve.calibration import auto_batch

    assert auto_batch({"input_ids": torch.zeros(32, 256, dtype=torch.long)}) == 8
    assert auto_batch({"pixel_values": torch.zeros(32, 3, 160, 160)}) == 8
    assert auto_batch({"pixel_values": torch.zeros(32, 3, 800, 1066)}) == 2
    assert auto_batch({"pixel_values": torch.zeros(4, 3, 1400, 1600)}) == 1
