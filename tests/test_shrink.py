import json

import pytest
import torch
from transformers import AutoModel, AutoModelForObjectDetection, BertConfig, BertModel, DetrConfig

from interprune import InterpruneError, save, shrink

PAPER = {"d_model": 128, "encoder_ffn_dim": 1024, "decoder_ffn_dim": 1024}


def test_paper_setting_parameter_counts_and_what_happens_to_each_tensor():
    from transformers import DetrForObjectDetection

    full = DetrForObjectDetection(DetrConfig(use_pretrained_backbone=False, num_labels=9))
    small, report = shrink(full, PAPER, "area")
    assert report.source_parameters == 41_503_694
    assert report.target_parameters == 28_121_166
    actions = {r.name: r.action for r in report.tensors}
    backbone = [n for n in actions if n.startswith("model.backbone")]
    transformer = [n for n in actions if n.startswith(("model.encoder", "model.decoder", "model.input_projection",
                                                       "model.query_position"))]
    assert len(backbone) == 265 and all(actions[n] == "copied" for n in backbone)
    frozen_bn = [r for r in report.tensors if r.kind == "buffer" and r.name.startswith("model.backbone")]
    assert len(frozen_bn) == 212  # 53 frozen batch norms x (weight, bias, mean, var): buffers, carried too
    assert len(transformer) > 200 and all(actions[n] == "resampled" for n in transformer)
    src, dst = full.state_dict(), small.state_dict()
    assert all(torch.equal(src[n], dst[n]) for n in backbone)


def test_written_folder_loads_with_stock_auto_class_and_no_key_warnings(detr_dir, tmp_path):
    model, report = shrink(detr_dir, {"d_model": 16, "encoder_ffn_dim": 32}, "select", seed=7)
    out = save(model, tmp_path / "small", report=report, source=detr_dir)
    loaded, info = AutoModelForObjectDetection.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert loaded.config.d_model == 16 and loaded.config.decoder_ffn_dim == 64
    for name, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name
    meta = json.loads((out / "interprune.json").read_text())
    assert meta["source"] == str(detr_dir) and meta["method"] == "select" and meta["seed"] == 7
    assert meta["overrides"] == {"d_model": 16, "encoder_ffn_dim": 32}
    assert meta["source_parameters"] > meta["target_parameters"] == sum(p.numel() for p in loaded.parameters())
    fc1 = next(t for t in meta["tensors"] if t["name"] == "model.encoder.layers.0.mlp.fc1.weight")
    assert fc1 == {"name": fc1["name"], "source_shape": [64, 32], "target_shape": [32, 16],
                   "action": "resampled", "kind": "parameter"}
    assert sum(meta["counts"].values()) == len(meta["tensors"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["small", "source"]


def test_any_model_family_bert_shrinks_and_loads_with_automodel(tmp_path):
    torch.manual_seed(0)
    bert = BertModel(BertConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                vocab_size=100, max_position_embeddings=32))
    bert.save_pretrained(tmp_path / "bert")
    small, report = shrink(tmp_path / "bert", {"hidden_size": 32, "intermediate_size": 64}, "select")
    out = save(small, tmp_path / "bert-small", report=report)
    loaded, info = AutoModel.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    ids = torch.tensor([[1, 5, 7, 2]])
    assert loaded(input_ids=ids).last_hidden_state.shape == (1, 4, 32)
    assert report.counts()["resampled"] > 10


def test_growing_is_supported(detr):
    big, report = shrink(detr, {"d_model": 64}, "select")
    assert report.target_parameters > report.source_parameters and report.counts()["resampled"] > 0
    back, _ = shrink(big, {"d_model": 32}, "select")
    for name, value in detr.state_dict().items():
        assert torch.equal(back.state_dict()[name], value), name


@pytest.mark.parametrize("overrides,message", [
    ({"dmodel": 16}, "unknown config key 'dmodel'"),
    ({"d_model": 30}, "not divisible by encoder_attention_heads=4"),
    ({"d_model": "wide"}, "bad value 'wide' for d_model"),
])
def test_bad_overrides_are_refused_before_any_work(detr_dir, overrides, message):
    with pytest.raises(InterpruneError, match=message):
        shrink(detr_dir, overrides, "area")


def test_bad_method_and_missing_source(tmp_path, detr_dir):
    with pytest.raises(InterpruneError, match="unknown method"):
        shrink(detr_dir, {}, "bicubic")
    with pytest.raises(InterpruneError, match="cannot load model"):
        shrink(tmp_path / "nowhere", {}, "area")


def test_save_is_atomic(detr, tmp_path, monkeypatch):
    save(detr, tmp_path / "out")
    with pytest.raises(InterpruneError, match="already exists"):
        save(detr, tmp_path / "out")

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(type(detr), "save_pretrained", broken)
    with pytest.raises(RuntimeError):
        save(detr, tmp_path / "half")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_half_precision_source_gives_a_half_precision_target(detr, tmp_path):
    detr.half().save_pretrained(tmp_path / "half")
    small, report = shrink(tmp_path / "half", {"d_model": 16}, "area")
    assert small.dtype == torch.float16 and report.counts()["resampled"] > 0


def test_dotted_keys_reach_sub_configs(detr):
    small, report = shrink(detr, {"backbone_config.out_indices": [1, 2, 3]}, "select")
    assert small.config.backbone_config.out_indices == [1, 2, 3]
    projection = next(t for t in report.tensors if t.name == "model.input_projection.weight")
    assert projection.action == "resampled" and projection.target_shape[1] < projection.source_shape[1]
