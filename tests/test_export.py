"""ONNX export: every family the tests build exports with free batch (and sizes where allowed) and matches
PyTorch in ONNX Runtime; bad input is one line and exit 2; nothing half-written is left behind."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import transformers as T

from interprune import InterpruneError
from interprune.cli import main

from .families import FAMILIES

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from interprune.deploy import export as export_module  # noqa: E402
from interprune.deploy.check import ATOL, compare, compare_detections  # noqa: E402
from interprune.deploy.export import export_onnx  # noqa: E402
from interprune.deploy.ortbench import bench_onnx  # noqa: E402

# What torch.onnx (dynamo) cannot export, with the exporter's own reason (checked below, so it stays true).
# What torch.onnx cannot export (faithfully), with the exporter tried and the reason, checked below so that it stays
# true. RT-DETR: both exporters write a graph whose encoder boxes (enc_topk_bboxes) differ from PyTorch's by 0.2 of
# the image side. Mixtral: TorchScript has no aten::histc, dynamo no ONNX function for transformers' grouped matmul.
MOE = "'aten::histc' to ONNX opset version 17 is not supported; then with dynamo: .*grouped_mm_fallback"
CANNOT = {"rt_detr": ("torchscript", "differs from PyTorch on output 'logits'"),
          "mixtral": ("auto", MOE), "qwen2_moe": ("auto", MOE),
          "mamba": ("torchscript", "ONNX Runtime failed: .*Gather"),  # the trace froze the sequence length
          "d_fine": ("torchscript", "differs from PyTorch on output 'logits'"),  # RT-DETR's kin; dynamo: see README
          # its multi-scale deformable attention reads the feature maps' sizes as numbers: the traced graph
          # keeps the first image size, and the check at a second size finds it (both exporters)
          "deformable_detr": ("auto", "differs from PyTorch on output 'logits' \\(other shape")}
NO_DEFAULT_PROCESSOR = {"dab_detr", "d_fine"}
SLOW = {"whisper", "deformable_detr"}  # need the dynamo exporter: 30-100 s each on a busy CPU


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def _saved(tmp_path, name):
    config_class, fields, model_class, _, _ = FAMILIES[name]
    torch.manual_seed(0)
    model_class(config_class(**fields)).eval().save_pretrained(tmp_path / name)
    if name in NO_DEFAULT_PROCESSOR:  # transformers names no image processor for these types: give them DETR's
        T.DetrImageProcessor().save_pretrained(tmp_path / name)
    return tmp_path / name


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in FAMILIES])
def test_every_family_exports_and_matches_pytorch(name, tmp_path):
    source = _saved(tmp_path, name)
    detector = FAMILIES[name][3] is T.AutoModelForObjectDetection
    out = tmp_path / "onnx"
    if name in CANNOT:
        exporter, reason = CANNOT[name]
        with pytest.raises(InterpruneError, match=reason):
            export_onnx(source, out, image_size=64 if detector else None, tokens=8, exporter=exporter)
        assert not out.exists() and _leftovers(tmp_path) == []
        return
    report = export_onnx(source, out, image_size=64 if detector else None, tokens=8)
    assert [c.passed for c in report.checks] == [True, True] and report.inputs
    assert all(axes[0] == "batch" for axes in report.inputs.values())
    assert all(v <= ATOL * 10 for check in report.checks for v in check.largest.values())
    assert (out / "model.onnx").is_file() and (out / "config.json").is_file()
    assert json.loads((out / "export.json").read_text())["checks"][0]["failed"] is None
    if detector:  # free image size, and the processor beside the model
        assert report.inputs["pixel_values"] == {0: "batch", 2: "height", 3: "width"}
        assert (out / "preprocessor_config.json").is_file()


def test_demo_source_exports_quantizes_and_keeps_its_detections(tmp_path, capsys):
    from interprune.data.shapes import draw_shapes

    photo = tmp_path / "shapes.png"
    draw_shapes(np.random.default_rng(0), 160)[0].save(photo)  # the source's own domain: confident detections
    out = tmp_path / "demo-onnx"
    assert main(["export", "demo", "--onnx", str(out), "--quantize", "dynamic", "--input", str(photo)]) == 0
    printed = capsys.readouterr().out
    assert "check passed: real input shapes.png" in printed
    saved = json.loads((out / "export.json").read_text())
    assert saved["quantized"]["failed"] is None and (out / "model_quantized.onnx").is_file()
    quantized = saved["quantized"]
    assert quantized["label"].endswith("shapes.png") and quantized["detail"] != "0 confident detections"
    assert "check passed" in printed and "largest differences: logits" in printed
    assert (out / "preprocessor_config.json").is_file()
    result = bench_onnx(out, batch=2, warmup=0, repeat=3, memory=False)
    assert result.runtime == "onnxruntime" and result.inputs == "image 3x160x160" and result.latency_ms > 0
    assert result.file_mb == pytest.approx((out / "model.onnx").stat().st_size / 1e6)


def test_detections_rule_names_a_changed_class_or_box():
    logits = np.array([[[5.0, 0.0, 0.0], [0.0, 0.0, 5.0]]])  # query 0 confident class 0; query 1 "no object"
    boxes = np.full((1, 2, 4), 0.5)
    same = compare_detections("x", {"logits": logits, "pred_boxes": boxes}, {"logits": logits, "pred_boxes": boxes}, 2)
    assert same.passed and same.detail == "1 confident detections"
    moved = compare_detections("x", {"logits": logits, "pred_boxes": boxes},
                               {"logits": logits, "pred_boxes": boxes + [[[0.03, 0, 0, 0], [0.5, 0, 0, 0]]]}, 2)
    assert moved.failed == "pred_boxes"  # the unconfident query's larger move does not count
    flipped = compare_detections("x", {"logits": logits, "pred_boxes": boxes},
                                 {"logits": logits[..., [1, 0, 2]], "pred_boxes": boxes}, 2)
    assert flipped.failed == "logits"
    close = compare("x", {"a": np.ones(3)}, {"a": np.ones(3) + 2e-3})
    assert close.failed == "a" and close.largest["a"] == pytest.approx(2e-3)


def test_bad_input_is_one_line_and_exit_2(detector_dir, tmp_path, capsys):
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "config.json").write_text((detector_dir / "config.json").read_text())
    assert main(["export", str(bare), "--onnx", str(tmp_path / "a")]) == 2
    assert "no weights" in capsys.readouterr().err
    (tmp_path / "file").write_text("x")
    assert main(["export", str(detector_dir), "--onnx", str(tmp_path / "file" / "out")]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
    assert main(["bench", str(detector_dir), "--runtime", "tensorrt"]) == 2
    err = capsys.readouterr().err
    assert "--runtime 'tensorrt': use one of torch, onnxruntime" in err and len(err.strip().splitlines()) == 1
    assert main(["export", str(tmp_path / "missing"), "--onnx", str(tmp_path / "b")]) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bare", "file"]


def test_exporter_failure_and_failed_check_leave_nothing(detector_dir, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"

    def refuse(*args, **kwargs):
        raise RuntimeError("## Exception summary\n<class 'ValueError'>: no ONNX function for this\nWhile executing "
                           "%x = call_function[target=torch.ops.aten.unknown_op.default]")

    with monkeypatch.context() as patch:
        patch.setattr(torch.onnx, "export", refuse)
        assert main(["export", str(detector_dir), "--onnx", str(out)]) == 2
    err = capsys.readouterr().err
    assert "operator aten.unknown_op.default; no ONNX function for this" in err and len(err.strip().splitlines()) == 1
    assert not out.exists() and _leftovers(tmp_path) == []

    real_compare = export_module.compare
    monkeypatch.setattr(export_module, "compare", lambda label, want, got: real_compare(
        label, want, {**got, "pred_boxes": got["pred_boxes"] + 0.01}))
    assert main(["export", str(detector_dir), "--onnx", str(out), "--exporter", "torchscript"]) == 1
    err = capsys.readouterr().err
    assert "differs from PyTorch on output 'pred_boxes'" in err and "nothing was written" in err
    assert not out.exists() and _leftovers(tmp_path) == []


def test_bench_onnxruntime_on_a_model_folder_and_on_a_file(detector_dir, tmp_path, capsys):
    saved = tmp_path / "b.json"
    assert main(["bench", str(detector_dir), "--runtime", "onnxruntime", "--repeat", "3", "--warmup", "0",
                 "--batch", "2", "--no-memory", "--json", str(saved), "--threads", "1"]) == 0
    printed = capsys.readouterr().out
    result = json.loads(saved.read_text())
    assert result["runtime"] == "onnxruntime" and result["inputs"] == "image 3x64x64" and result["threads"] == 1
    assert "in ONNX Runtime on cpu (1 thread)" in printed and result["backbone_ms"] is None
    export_onnx(detector_dir, tmp_path / "e")
    from_file = bench_onnx(tmp_path / "e" / "model.onnx", batch=2, warmup=0, repeat=3, memory=False)
    assert from_file.inputs == "image 3x64x64" and from_file.parameters > 0


def test_auto_falls_back_to_dynamo_and_says_why(tmp_path, monkeypatch):
    source = _saved(tmp_path, "bert")
    real_export = export_module._export

    def no_torchscript(model, inputs, outputs, axes, path, exporter):
        if exporter == "torchscript":
            raise InterpruneError("torch.onnx (torchscript) cannot export this BertModel: Exporting the operator "
                                  "'aten::diff' to ONNX opset version 17 is not supported")
        real_export(model, inputs, outputs, axes, path, exporter)

    monkeypatch.setattr(export_module, "_export", no_torchscript)
    report = export_onnx(source, tmp_path / "onnx", tokens=8)
    assert report.exporter.startswith("torch.onnx.export (dynamo)") and "aten::diff" in report.exporter
    assert "used instead of the TorchScript exporter" in report.exporter
    assert report.opset == 18 and all(check.passed for check in report.checks)
    assert report.inputs["input_ids"] == {0: "batch", 1: "sequence"}


def test_an_exported_encoder_takes_what_its_tokenizer_gives(tmp_path, capsys):
    """BERT's tokenizer gives token_type_ids: the graph takes them, so the tokenizer's output feeds ONNX Runtime
    as it is, and the check (segment 1 in the dummy inputs' second half, a real text file) covers them."""
    import onnxruntime

    from .conftest import tiny_bert

    source = tmp_path / "bert"
    model = tiny_bert()
    model.save_pretrained(source)
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "rock", "of", "ore"]
    (tmp_path / "vocab.txt").write_text("\n".join(words))
    T.BertTokenizer(str(tmp_path / "vocab.txt")).save_pretrained(source)
    (tmp_path / "text.txt").write_text("a rock of ore")
    out = tmp_path / "onnx"
    assert main(["export", str(source), "--onnx", str(out), "--tokens", "8",
                 "--input", str(tmp_path / "text.txt")]) == 0
    assert "check passed: real input text.txt" in capsys.readouterr().out
    report = json.loads((out / "export.json").read_text())
    assert report["inputs"]["token_type_ids"] == {"0": "batch", "1": "sequence"}
    assert all(check["failed"] is None for check in report["checks"]) and len(report["checks"]) == 3
    runner = onnxruntime.InferenceSession(str(out / "model.onnx"))
    assert {i.name for i in runner.get_inputs()} == {"input_ids", "attention_mask", "token_type_ids"}
    tokenizer = T.AutoTokenizer.from_pretrained(out)  # the one copied beside the graph
    pairs = (["a rock", "ore"], ["rock of ore", "a"])  # sentence pairs: segment 1, and padding
    fed = tokenizer(*pairs, padding=True, return_tensors="np")
    assert fed["token_type_ids"].max() == 1 and fed["attention_mask"].min() == 0
    got = runner.run(None, dict(fed))
    with torch.no_grad():
        want = model(**tokenizer(*pairs, padding=True, return_tensors="pt"))
    np.testing.assert_allclose(got[0], want.last_hidden_state.numpy(), atol=ATOL, rtol=1e-3)
    assert bench_onnx(out, batch=2, warmup=0, repeat=2, memory=False).latency_ms > 0  # its dummy inputs fit too


SWEEP = """\
name: tiny
source: {source}
target: {{d_model: 16, encoder_ffn_dim: 32, decoder_ffn_dim: 32}}
data: {data}
seeds: [0]
train: {{steps: 1, val_every: 1, workers: 0, log_every: 1}}
bench: {{runtimes: [{runtimes}]}}
experiments:
  - {{name: full-pretrained, size: full, init: pretrained}}
  - {{name: small-area, size: small, init: area}}
"""


def test_sweep_benches_both_runtimes_when_asked(tmp_path, detector_dir, rocks_dir, capsys):
    from interprune.sweep.config import load_sweep
    from interprune.sweep.report import write_report
    from interprune.sweep.run import run_sweep

    bad = tmp_path / "bad.yaml"
    bad.write_text(SWEEP.format(source=detector_dir, data=rocks_dir, runtimes="torch, tensorrt"))
    with pytest.raises(InterpruneError, match=r"bad.yaml:7: bench.*runtimes.1"):
        load_sweep(bad)
    path = tmp_path / "sweep.yaml"
    path.write_text(SWEEP.format(source=detector_dir, data=rocks_dir, runtimes="torch, onnxruntime"))
    out = tmp_path / "results"
    run_sweep(load_sweep(path), out, progress=False)
    assert "[bench] small-area: measuring its model on cpu, ONNX Runtime" in capsys.readouterr().out
    for name in ("full-pretrained", "small-area"):
        torch_cost = json.loads((out / "bench" / f"{name}.json").read_text())
        ort_cost = json.loads((out / "bench" / f"{name}.onnxruntime.json").read_text())
        assert torch_cost["runtime"] == "torch" and ort_cost["runtime"] == "onnxruntime"
        assert ort_cost["model"] == torch_cost["model"] and ort_cost["inputs"] == torch_cost["inputs"]
    text = write_report(out).read_text()
    assert "ONNX Runtime ms" in text and "quality_vs_latency_onnxruntime.png" in text
    assert (out / "figures" / "quality_vs_latency_onnxruntime.png").is_file()


def test_bench_onnxruntime_takes_photos_height_and_width(detector_dir):
    """``--image-size H W`` (the user's photos, as the PyTorch bench takes them) also reaches the ONNX export of
    a model folder (it used to raise a TypeError there): a 2:1 photo stays 2:1 within the processor's 96 px."""
    result = bench_onnx(detector_dir, batch=2, warmup=0, repeat=3, memory=False, image_size=(48, 96))
    assert result.inputs == "image 3x48x96"
