import json

import pytest
import torch
from transformers import AutoModelForObjectDetection

from interprune.cli import main
from interprune.data.domains import write_domain
from interprune.demo import DEMO_SOURCE, run_demo
from interprune.pretrain import read_model_config

from .conftest import TINY_DETR


def test_pretrain_writes_a_fresh_model_and_trains_everything(tmp_path, capsys):
    data = write_domain("shapes", tmp_path / "shapes", train=4, valid=2, size=64)
    config = tmp_path / "model.json"
    config.write_text(json.dumps({"model_type": "detr", **{k: v for k, v in TINY_DETR.items() if k != "num_labels"}}))
    assert main(["pretrain", "--config", str(config), "--data", str(data), "--out", str(tmp_path / "src"),
                 "--steps", "2", "--val-every", "2", "--workers", "0", "--image-size", "64"]) == 0
    init = AutoModelForObjectDetection.from_pretrained(tmp_path / "src" / "init")
    trained, info = AutoModelForObjectDetection.from_pretrained(tmp_path / "src" / "run" / "model",
                                                                output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert trained.config.num_labels == 10 and trained.config.id2label[0] == "circle"
    stem = "model.backbone.model.conv_stem.weight"
    assert not torch.equal(init.state_dict()[stem], trained.state_dict()[stem])  # the stem learned too
    bn = "model.backbone.model.bn1.running_mean"
    assert not torch.equal(init.state_dict()[bn], trained.state_dict()[bn])  # so did its batch-norm statistics
    recipe = json.loads((tmp_path / "src" / "run" / "model" / "pretrain.json").read_text())
    assert recipe["command"].startswith("interprune pretrain --config") and recipe["summary"]["steps"] == 2
    assert "the pretrained model is" in capsys.readouterr().out


def test_demo_model_config_is_the_shipped_sources():
    shipped = json.loads((DEMO_SOURCE / "config.json").read_text())
    for key, value in read_model_config("demo").items():
        if key != "backbone_config":
            assert shipped[key] == value, key
    assert (DEMO_SOURCE / "model.safetensors").stat().st_size < 10_000_000


@pytest.mark.slow
def test_demo_end_to_end_in_miniature(tmp_path, capsys):
    """The real demo with one step per run and one seed: every piece, the shipped source included."""
    report = run_demo(tmp_path / "demo", steps=1, seeds=1)
    printed = capsys.readouterr().out
    check = json.loads((tmp_path / "demo" / "source_check.json").read_text())
    assert check["map_50"] > 0.3  # the shipped source genuinely detects on its own domain
    assert f"mAP@50 {check['map_50']:.3f}" in printed and str(report.resolve()) in printed
    text = report.read_text()
    for name in ("full-pretrained", "full-transfer", "small-random", "small-area", "small-avg-pool", "small-select",
                 "small-calibrated", "small-distilled", "small-calibrated-same-steps"):
        assert f"| {name} |" in text
    assert "[full-transfer seed 0] starts from exactly the weights of full-pretrained" in printed
    assert "[small-avg-pool seed 0] starts from exactly the weights of small-area" in printed
    assert (tmp_path / "demo" / "report.html").is_file() and (tmp_path / "demo" / "figures" / "fig4_small_models.png").is_file()
    # the README's table, written from the run so the README's numbers can be regenerated from it
    table = (tmp_path / "demo" / "readme_table.md").read_text().splitlines()
    assert table[0].startswith("| experiment | parameters | val loss at step 0 | final val loss | mAP@50 |")
    rows = {line.split(" | ")[0][2:]: line.split(" | ") for line in table[2:]}
    assert "full-transfer (= full-pretrained, trained once)" in rows and "small-avg-pool (= small-area, trained once)" in rows
    assert "small-calibrated (+ rotate, compensate)" in rows
    distilled = next(r for name, r in rows.items() if name.startswith("**small-distilled**"))
    assert distilled[5] == "2"  # pipeline steps: its own and its teacher's
    assert rows["full-pretrained"][1] == "2,575,255"
