import json
import subprocess
import sys

import torch

from interprune.cli import main
from interprune.methods import METHODS


def test_methods_lists_one_line_per_method(capsys):
    assert main(["methods"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == list(METHODS)
    assert all(len(line.split()) > 2 for line in lines)


def test_python_dash_m_is_the_same_program():
    run = subprocess.run([sys.executable, "-m", "interprune", "methods"], capture_output=True, text=True)
    assert run.returncode == 0 and run.stdout.split()[0] == "nearest-exact"


def test_shrink_writes_a_folder_and_prints_a_summary(detr_dir, tmp_path, capsys):
    out = tmp_path / "small"
    code = main(["shrink", str(detr_dir), "--set", "d_model=16", "--set", "encoder_ffn_dim=32",
                 "--method", "area", "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0
    assert "% smaller" in printed and "resampled (area)" in printed and str(out) in printed
    meta = json.loads((out / "interprune.json").read_text())
    assert meta["overrides"] == {"d_model": 16, "encoder_ffn_dim": 32}
    assert main(["shrink", str(detr_dir), "--out", str(out), "--overwrite", "--method", "first", "--dtype", "float16"]) == 0
    assert json.loads((out / "interprune.json").read_text())["method"] == "first"
    from transformers import AutoModelForObjectDetection

    assert AutoModelForObjectDetection.from_pretrained(out).dtype == torch.float16


def test_bad_input_is_one_line_exit_2_and_writes_nothing(detr_dir, tmp_path, capsys):
    cases = [
        ["--method", "cubic"],
        ["--set", "d_model=30"],
        ["--set", "no_such_key=1"],
        ["--set", "d_model"],
        ["--method", "calibrated", "--calibration", str(tmp_path), "--calibration-batch", "0"],
    ]
    for extra in cases:
        assert main(["shrink", str(detr_dir), "--out", str(tmp_path / "x"), *extra]) == 2
        err = capsys.readouterr().err
        assert err.startswith("interprune: error: ") and err.count("\n") == 1, err
    assert main(["shrink", str(tmp_path / "missing"), "--out", str(tmp_path / "x")]) == 2
    assert main(["shrink", str(detr_dir), "--out", str(detr_dir)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["source"]


def test_ctrl_c_is_one_line_exit_130_and_leaves_nothing(detr_dir, tmp_path, capsys, monkeypatch):
    """Ctrl-C in the middle of a shrink printed a full traceback; now one line, exit 130, and the folder
    being written is gone (it was written into a temporary sibling)."""
    import interprune.weights.transfer as transfer

    put, calls = transfer._put_one, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return put(*args, **kwargs)

    monkeypatch.setattr(transfer, "_put_one", interrupted)
    out = tmp_path / "work" / "small"
    out.parent.mkdir()
    code = main(["shrink", str(detr_dir), "--set", "d_model=16", "--method", "select", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 130 and err.startswith("interprune: interrupted") and len(err.strip().splitlines()) == 1, err
    assert list(out.parent.iterdir()) == []
