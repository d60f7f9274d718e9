"""Importance methods, depth choice, rotation and compensation on tiny models (no downloads)."""

import json

import pytest
import torch
from PIL import Image

from interprune import InterpruneError, save, shrink
from interprune.preserve.calibration import calibration_inputs
from interprune.cli import main
from interprune.plan import make_plan
from interprune.preserve.rotate import rotate_heads
from interprune.hf.config import target_config
from interprune.hf.models import build_model
from interprune.sweep.config import load_sweep

from .conftest import tiny_bert, tiny_detr


@pytest.fixture
def pixels():
    gen = torch.Generator().manual_seed(5)
    return {"pixel_values": torch.randn(4, 3, 64, 64, generator=gen), "pixel_mask": torch.ones(4, 64, 64).long()}


def test_magnitude_keeps_the_highest_norm_units_in_every_tensor_of_a_dimension():
    source = tiny_bert()
    strong = [3, 17, 40, 63]
    with torch.no_grad():
        layer = source.encoder.layer[1]
        layer.intermediate.dense.weight[strong] *= 6  # large rows where the FFN unit is written ...
        layer.output.dense.weight[:, strong] *= 6  # ... and large columns where it is read
    small, report = shrink(source, {"intermediate_size": 8}, "magnitude")
    kept = torch.tensor(report.choices["encoder.layer.1.ffn"])
    assert set(strong) <= set(kept.tolist()) and len(kept) == 8
    mid = small.encoder.layer[1]  # one choice, applied consistently to the rows, the bias and the columns
    assert torch.equal(mid.intermediate.dense.weight, layer.intermediate.dense.weight[kept])
    assert torch.equal(mid.intermediate.dense.bias, layer.intermediate.dense.bias[kept])
    assert torch.equal(mid.output.dense.weight, layer.output.dense.weight[:, kept])
    other = torch.tensor(report.choices["encoder.layer.0.ffn"])  # FFN units are chosen per layer
    assert not torch.equal(other, kept)
    assert report.preserved["method"] == "magnitude" and report.preserved["compensated"] == []


def test_residual_choice_keeps_the_sine_position_embedding_exactly_at_the_half_cut(pixels):
    source = tiny_detr()
    small, report = shrink(source, {"d_model": 16}, "calibrated", calibration=pixels)
    kept = torch.tensor(report.choices["residual"])
    expected = torch.tensor([4 * j + i for j in range(4) for i in (0, 1)])
    assert torch.equal(kept, torch.cat([expected, expected + 16]))  # channels 4j, 4j+1 of each half
    mask = torch.ones(1, 5, 7)

    def positions(model):
        sine = next(m for m in model.modules() if type(m).__name__.endswith("SinePositionEmbedding"))
        return sine(shape=(1, 3, 5, 7), device="cpu", dtype=torch.float32, mask=mask)

    pos_s, pos_t = positions(source), positions(small)
    assert torch.allclose(pos_t, pos_s[:, kept], atol=1e-6)  # the stock small model encodes positions alike


def test_head_rotation_leaves_the_function_unchanged(pixels):
    source = tiny_detr()
    plan = make_plan(source, build_model(target_config(source.config, {"d_model": 16})))
    rotated, choices = rotate_heads(source, plan, pixels)
    assert choices and all(torch.equal(c, torch.arange(4)) for c in choices.values())  # width 8 -> 4 per head
    name = next(iter(choices))
    q = f"{name.removesuffix('.head_dim')}.q_proj.weight"
    assert not torch.allclose(rotated.state_dict()[q], source.state_dict()[q])  # weights did change
    with torch.no_grad():
        a, b = source(**pixels), rotated(**pixels)
    assert torch.allclose(a.logits, b.logits, atol=1e-4) and torch.allclose(a.pred_boxes, b.pred_boxes, atol=1e-5)


def test_compensation_brings_the_small_detector_closer_to_the_source(pixels):
    source = tiny_detr()
    with torch.no_grad():
        reference = source(**pixels).logits

    def error(**options):
        small, report = shrink(source, {"d_model": 16, "encoder_ffn_dim": 32, "decoder_ffn_dim": 32}, "calibrated",
                               calibration=pixels, **options)
        with torch.no_grad():
            return float((small(**pixels).logits - reference).norm() / reference.norm()), report

    plain, _ = error()
    refit, report = error(compensate=True)
    both, _ = error(compensate=True, rotate=True)
    assert refit < 0.5 * plain, (plain, refit)
    assert both < plain
    compensated = report.preserved["compensated"]
    assert compensated[0] == "model.input_projection" and "class_labels_classifier" in compensated
    assert report.preserved["calibration_examples"] == 4 and report.preserved["held_out_examples"] == 1
    assert set(report.preserved["strengths"]) == set(report.preserved["compensated"])


def test_same_inputs_and_seed_give_the_same_model(pixels, tmp_path):
    source = tiny_detr()
    options = dict(calibration=pixels, compensate=True, rotate=True, seed=3)
    a, report_a = shrink(source, {"d_model": 16, "encoder_layers": 1}, "calibrated", layers="importance", **options)
    b, report_b = shrink(source, {"d_model": 16, "encoder_layers": 1}, "calibrated", layers="importance", **options)
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
    assert report_a.to_dict() == report_b.to_dict()
    out = save(a, tmp_path / "small", report=report_a)
    meta = json.loads((out / "interprune.json").read_text())
    assert meta["preserved"]["layers"] == report_a.preserved["layers"]
    assert set(meta["choices"]) >= {"residual", "model.encoder.layers"}


def test_depth_choice_keeps_and_reports_the_chosen_source_layers(pixels):
    source = tiny_bert()
    ids = {"input_ids": torch.randint(0, 50, (6, 10), generator=torch.Generator().manual_seed(1))}
    small, report = shrink(source, {"num_hidden_layers": 2}, "magnitude", layers="uniform")
    assert report.preserved["layers"] == {"encoder.layer": [0, 2]}
    assert torch.equal(small.encoder.layer[1].output.dense.weight, source.encoder.layer[2].output.dense.weight)
    from interprune.preserve.importance import layer_influence

    influence = layer_influence(source, "encoder.layer", ids)
    _, report = shrink(source, {"num_hidden_layers": 1}, "calibrated", calibration=ids, layers="importance")
    assert report.preserved["layers"] == {"encoder.layer": [int(influence.argmax())]}
    _, report = shrink(source, {"num_hidden_layers": 2}, "select")
    assert report.choices["encoder.layer"] == [0, 1]  # the default keeps the first layers


def test_options_are_checked_before_any_work(detector_dir, tmp_path, capsys):
    with pytest.raises(InterpruneError, match="needs calibration inputs"):
        shrink(tiny_detr(), {"d_model": 16}, "calibrated")
    with pytest.raises(InterpruneError, match="cannot take layer"):
        shrink(tiny_detr(), {"d_model": 16}, "area", compensate=True, calibration={})
    with pytest.raises(InterpruneError, match="would ignore it"):  # silently unused data is a mistake too
        shrink(tiny_detr(), {"d_model": 16}, "select", calibration={})
    out = tmp_path / "small"
    assert main(["shrink", str(detector_dir), "--set", "d_model=16", "--method", "calibrated", "--out", str(out)]) == 2
    assert "--method calibrated needs calibration inputs" in capsys.readouterr().err and not out.exists()
    assert main(["shrink", str(detector_dir), "--method", "magnitude", "--compensate", "--calibration",
                 str(tmp_path / "missing"), "--out", str(out)]) == 2
    assert "does not exist" in capsys.readouterr().err and not out.exists()


def test_cli_shrink_with_calibration_images_compensates_and_records_it(detector_dir, tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    gen = torch.Generator().manual_seed(0)
    for i in range(3):
        pixels = (torch.rand(40, 56, 3, generator=gen) * 255).byte().numpy()
        Image.fromarray(pixels).save(images / f"{i}.png")
    out = tmp_path / "small"
    assert main(["shrink", str(detector_dir), "--set", "d_model=16", "--method", "calibrated", "--calibration",
                 str(images), "--compensate", "--rotate", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "layers refit on 3 calibration examples" in printed
    meta = json.loads((out / "interprune.json").read_text())
    assert meta["method"] == "calibrated" and meta["preserved"]["rotated"] and meta["preserved"]["compensated"]
    assert meta["preserved"]["calibration"] == str(images) and meta["preserved"]["calibration_examples"] == 3


def test_calibration_inputs_from_text_through_the_tokenizer(tmp_path):
    from transformers import BertTokenizer

    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "rock", "of", "ore"]))
    tokenizer = BertTokenizer(str(vocab))
    text = tmp_path / "examples.txt"
    text.write_text("a rock\n\nrock of ore\na rock of ore\n")
    batch = calibration_inputs(text, tokenizer, count=2, seed=0)
    assert batch["input_ids"].shape[0] == 2 and batch["attention_mask"].shape == batch["input_ids"].shape
    assert calibration_inputs(text, tokenizer, count=2, seed=0)["input_ids"].tolist() == batch["input_ids"].tolist()
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(InterpruneError, match="no non-empty lines"):
        calibration_inputs(tmp_path / "empty.txt", tokenizer)
    (tmp_path / "nothing").mkdir()
    with pytest.raises(InterpruneError, match="no images"):
        calibration_inputs(tmp_path / "nothing", tokenizer)


SWEEP = """\
source: {source}
target: {{d_model: 16}}
data: {data}
experiments:
  - {{name: small-random, init: scratch}}
  - {experiment}
"""


@pytest.mark.parametrize("experiment, message", [
    ("{name: a, init: calibrated, rotate: true}", "experiments.1: rotate: true, init: calibrated needs calibration "
                                                   "inputs; pass calibration: DATA"),
    ("{name: a, init: area, compensate: true, calibration: x}", "experiments.1: init 'area' takes no compensate"),
    ("{name: a, init: magnitude, layers: best}", "experiments.1.layers: Input should be 'first'"),
])
def test_sweep_method_options_are_validated_with_the_line(tmp_path, detector_dir, rocks_dir, experiment, message):
    path = tmp_path / "sweep.yaml"
    path.write_text(SWEEP.format(source=detector_dir, data=rocks_dir, experiment=experiment))
    with pytest.raises(InterpruneError, match=f"sweep.yaml:6: {message}"):
        load_sweep(path)


def test_sweep_experiment_takes_method_options(tmp_path, detector_dir, rocks_dir):
    path = tmp_path / "sweep.yaml"
    path.write_text(SWEEP.format(source=detector_dir, data=rocks_dir, experiment="{name: small-kept, init: "
                                 "calibrated, calibration: " + str(rocks_dir) + ", compensate: true, layers: importance}"))
    experiment = load_sweep(path).experiments[1]
    assert experiment.shrink_options() == {"calibration": str(rocks_dir), "calibration_size": 32, "compensate": True,
                                           "rotate": False, "layers": "importance"}


def test_sweep_calibrates_on_its_own_training_images(tmp_path, detector_dir, rocks_dir):
    from interprune.data import open_dataset
    from interprune.hf.models import load_model
    from interprune.sweep.config import preset_path
    from interprune.sweep.run import prepare_model

    demo = {e.name: e for e in load_sweep(preset_path("demo")).experiments}["small-calibrated"]
    assert demo.calibration == "data" and demo.compensate and demo.rotate
    path = tmp_path / "sweep.yaml"
    path.write_text(SWEEP.format(source=detector_dir, data=rocks_dir, experiment="{name: kept, init: calibrated, "
                                 "calibration: data, compensate: true}"))
    config = load_sweep(path)
    folder = prepare_model(config, config.experiments[1], 0, tmp_path / "model", load_model(detector_dir),
                           data=open_dataset(rocks_dir))
    meta = json.loads((folder / "interprune.json").read_text())
    assert meta["preserved"]["calibration_examples"] == 6 and meta["preserved"]["compensated"]


def test_grouped_query_heads_follow_their_key_value_heads_and_rotary_heads_are_not_rotated():
    from transformers import LlamaConfig, LlamaModel

    torch.manual_seed(0)
    source = LlamaModel(LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                    num_key_value_heads=2, vocab_size=50, max_position_embeddings=32)).eval()
    ids = {"input_ids": torch.randint(0, 50, (8, 12), generator=torch.Generator().manual_seed(1))}
    _, report = shrink(source, {"num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 8}, "calibrated",
                       calibration=ids)
    kv = report.choices["layers.0.self_attn.kv_heads"]
    assert report.choices["layers.0.self_attn.heads"] == [2 * kv[0], 2 * kv[0] + 1]  # the kept group's own heads
    for method in ("magnitude", "calibrated"):  # fewer query heads, all key/value heads kept: each group halves
        _, report = shrink(source, {"num_attention_heads": 2, "head_dim": 8}, method, calibration=ids)
        assert report.choices["layers.0.self_attn.heads"] == [0, 2]  # one query head per kv head, in its group
    _, report = shrink(source, {"hidden_size": 16}, "calibrated", calibration=ids, rotate=True)
    assert report.preserved["rotated"] == []  # rotary channel pairs must stay as they are
    assert report.choices["layers.0.self_attn.head_dim"] == [0, 2, 4, 6]  # rotary frequencies kept (plan)


def test_calibration_inputs_from_a_roboflow_export_use_its_training_images_and_the_models_processor(
        rocks_dir, detector_dir):
    from interprune.hf.processors import model_processor

    processor = model_processor(detector_dir)
    batch = calibration_inputs(rocks_dir, processor, count=4, seed=1)
    assert batch["pixel_values"].shape[:2] == (4, 3) and min(batch["pixel_values"].shape[-2:]) == 64  # its 64 px
    assert set(batch) == {"pixel_values", "pixel_mask"}
    again = calibration_inputs(rocks_dir, processor, count=4, seed=1)
    assert torch.equal(again["pixel_values"], batch["pixel_values"])  # a seeded sample
    with pytest.raises(InterpruneError, match="holds images, but the model has no image processor"):
        calibration_inputs(rocks_dir, object())
