import json

import pytest
import torch
from transformers import BertConfig, BertModel, ViTConfig, ViTModel

from interprune import InterpruneError
from interprune.bench import bench
from interprune.cli import main


def test_detector_at_its_processors_size(detector_dir):
    result = bench(detector_dir, batch=2, warmup=1, repeat=3, memory=False)
    assert result.inputs == "image 3x64x64" and result.runs == 3 and result.batch == 2
    assert result.parameters == 320_552  # the tiny DETR of conftest, as count_parameters gives it
    assert result.file_mb == pytest.approx((detector_dir / "model.safetensors").stat().st_size / 1e6)
    assert 0 < result.backbone_ms < result.latency_ms <= result.latency_p90_ms
    assert 0 < result.backbone_share < 1 and result.throughput > 0
    assert result.peak_memory_mb is None and "latency at batch 1" in result.summary()


def test_text_and_vision_models_get_their_own_inputs(tmp_path):
    BertModel(BertConfig(hidden_size=32, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                         vocab_size=50, max_position_embeddings=16)).save_pretrained(tmp_path / "bert")
    ViTModel(ViTConfig(hidden_size=32, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                       image_size=32, patch_size=8)).save_pretrained(tmp_path / "vit")
    text = bench(tmp_path / "bert", batch=2, warmup=0, repeat=3, memory=False)
    assert text.inputs == "16 tokens" and text.backbone_ms is None  # capped at the model's positions
    vision = bench(tmp_path / "vit", batch=2, warmup=0, repeat=3, memory=False)
    assert vision.inputs == "image 3x32x32"


@pytest.mark.slow  # a child process imports torch and transformers: several seconds, more on a busy machine
def test_cpu_peak_memory_is_measured_in_a_fresh_process(tmp_path):
    BertModel(BertConfig(hidden_size=256, intermediate_size=1024, num_hidden_layers=2, num_attention_heads=4,
                         vocab_size=30000)).save_pretrained(tmp_path / "bert")  # about 34 MB of weights
    result = bench(tmp_path / "bert", batch=16, warmup=0, repeat=3, tokens=128)
    weights = result.parameters * 4 / 1e6
    assert weights * 0.9 < result.peak_memory_mb < result.peak_memory_batch_mb < weights * 20
    assert "fresh process" in result.memory_method


def test_cli_bench_writes_json_and_rejects_bad_input(detector_dir, tmp_path, capsys):
    out = tmp_path / "b.json"
    threads = torch.get_num_threads()
    assert main(["bench", str(detector_dir), "--repeat", "3", "--warmup", "0", "--batch", "2", "--no-memory",
                 "--json", str(out), "--clock", "cpu", "--threads", "1"]) == 0
    printed = capsys.readouterr().out
    saved = json.loads(out.read_text())
    assert f"(CPU time): {saved['latency_ms']:.2f} ms median" in printed and saved["inputs"] == "image 3x64x64"
    assert saved["clock"] == "cpu" and saved["threads"] == 1 and torch.get_num_threads() == threads  # restored
    assert main(["bench", str(tmp_path / "nothing")]) == 2
    assert "cannot load model" in capsys.readouterr().err
    with pytest.raises(InterpruneError, match="--batch and --repeat must be at least 1"):
        bench(detector_dir, batch=0)
    if not torch.cuda.is_available():
        assert main(["bench", str(detector_dir), "--device", "cuda"]) == 2
        assert "no CUDA GPU is visible here" in capsys.readouterr().err


def test_photos_of_a_given_size_go_through_the_processors_real_resize(detector_dir, tmp_path, capsys):
    """2048 x 1371 photos under a 64 px shortest edge (96 px longest) are 64 x 95 inputs (the processor
    rounds down), not 64 x 64."""
    result = bench(detector_dir, batch=1, warmup=0, repeat=3, memory=False, image_size=(1371, 2048))
    assert result.inputs == "image 3x64x95"
    assert main(["bench", str(detector_dir), "--repeat", "3", "--warmup", "0", "--batch", "1", "--no-memory",
                 "--image-size", "1371", "2048", "--json", str(tmp_path / "b.json")]) == 0
    assert json.loads((tmp_path / "b.json").read_text())["inputs"] == "image 3x64x95"
    assert main(["bench", str(detector_dir), "--repeat", "3", "--no-memory", "--image-size", "48"]) == 0
    assert "image 3x48x48" in capsys.readouterr().out  # one number: a square at that shortest edge, as before
    assert main(["bench", str(detector_dir), "--image-size", "1", "2", "3"]) == 2
    assert "give one shortest edge or HEIGHT WIDTH" in capsys.readouterr().err
