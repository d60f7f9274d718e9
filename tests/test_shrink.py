import json
import os
import time

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
    residual = next(d for d in meta["plan"]["dimensions"] if d["name"] == "residual")
    assert residual["kind"] == "residual" and (residual["source"], residual["target"]) == (32, 16)
    assert ["model.input_projection.weight", 0, 1, 1] in residual["axes"]
    assert meta["choices"]["residual"] == residual["aligned"] and len(meta["choices"]["model.encoder.layers.0.ffn"]) == 32
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
    loaded = type(detr).from_pretrained(tmp_path / "half")
    again, _ = shrink(loaded, {"d_model": 16}, "area")  # a loaded fp16 config once built a mixed-dtype backbone
    assert {p.dtype for p in again.parameters()} == {torch.float16}


def test_dotted_keys_reach_sub_configs(detr):
    small, report = shrink(detr, {"backbone_config.out_indices": [1, 2, 3]}, "select")
    assert small.config.backbone_config.out_indices == [1, 2, 3]
    projection = next(t for t in report.tensors if t.name == "model.input_projection.weight")
    assert projection.action == "resampled" and projection.target_shape[1] < projection.source_shape[1]


# ----------------------------------------------------------------- configs rebuilt through their class

from transformers import AutoModel as _Auto  # noqa: E402

from interprune.cli import main  # noqa: E402

from .families import FAMILIES  # noqa: E402


def saved(family, tmp_path, **changes):
    config_cls, fields, model_cls, *_ = FAMILIES[family]
    torch.manual_seed(0)
    folder = tmp_path / family
    model_cls(config_cls(**{**fields, **changes})).save_pretrained(folder)
    return folder


def shrink_and_load(folder, overrides, tmp_path, auto=_Auto):
    small, report = shrink(folder, overrides, "select")
    out = save(small, tmp_path / "out", report=report, source=folder)
    loaded, info = auto.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    return loaded


@pytest.mark.parametrize("family,overrides", [
    ("qwen2", {"num_hidden_layers": 1}), ("qwen3", {"num_hidden_layers": 1}), ("dinov2", {"num_hidden_layers": 1}),
    ("swin", {"depths": [2], "num_heads": [2]}), ("convnext", {"depths": [1], "hidden_sizes": [8]}),
    ("resnet", {"depths": [1], "hidden_sizes": [8]}),
])
def test_derived_fields_follow_the_fields_they_come_from(family, overrides, tmp_path):
    loaded = shrink_and_load(saved(family, tmp_path), overrides, tmp_path)
    for key, value in overrides.items():
        assert getattr(loaded.config, key) == value
    if family.startswith("qwen"):
        assert len(loaded.config.layer_types) == 1


def test_swin_hidden_size_follows_embed_dim_and_stage_lists_follow_depths(tmp_path):
    folder = saved("swin", tmp_path)
    assert shrink_and_load(folder, {"embed_dim": 8}, tmp_path).config.hidden_size == 16
    small, _ = shrink(folder, {"depths": [2]}, "select")
    assert small.config.num_heads == [2] and small.config.hidden_size == 16


def test_a_longer_stage_list_needs_its_companion_lists(tmp_path):
    with pytest.raises(InterpruneError, match=r"depths now has 3 entries but num_heads has 2; set num_heads to a "
                                              r"list of 3 too"):
        shrink(saved("swin", tmp_path), {"depths": [2, 2, 2]}, "select")


def test_bad_choices_are_refused(detr):
    with pytest.raises(InterpruneError, match=r"choices\['residual'\] must hold 16 source indices in 0..31"):
        shrink(detr, {"d_model": 16}, "select", choices={"residual": torch.arange(15)})


def test_llama_without_head_dim_in_its_config_derives_it_again(tmp_path):
    folder = saved("llama", tmp_path)
    config = json.loads((folder / "config.json").read_text())
    config.pop("head_dim", None)  # the usual Hub layout
    (folder / "config.json").write_text(json.dumps(config))
    small, _ = shrink(folder, {"hidden_size": 16, "intermediate_size": 32}, "select")
    assert small.config.head_dim == 4 and small.layers[0].self_attn.q_proj.weight.shape == (16, 16)


def test_more_heads_with_an_explicit_head_dim_is_legal(tmp_path):
    """(Llama's own config class refuses hidden % heads != 0 in transformers 5; Mistral and Qwen3 do not.)"""
    small, _ = shrink(saved("mistral", tmp_path), {"num_attention_heads": 6, "head_dim": 8}, "select")
    assert small.layers[0].self_attn.q_proj.weight.shape == (48, 32)
    wide, _ = shrink(saved("qwen3", tmp_path / "x", head_dim=16), {"num_attention_heads": 6}, "select")
    assert wide.config.head_dim == 16 and wide.layers[0].self_attn.q_proj.weight.shape == (96, 32)


@pytest.mark.parametrize("family,overrides,message", [
    ("llama", {"num_key_value_heads": 3}, "num_key_value_heads=3 does not divide num_attention_heads=4; set "
                                          "num_key_value_heads to one of 1, 2, 4"),
    ("qwen3", {"num_key_value_heads": 3}, "num_key_value_heads=3 does not divide"),
    ("swin", {"num_heads": [3, 3]}, r"not divisible by num_heads\[0\]=3"),
    ("clip", {"text_config.hidden_size": 30}, "bad value 30 for text_config.hidden_size: .*not a multiple of the "
                                               "number of attention heads"),
    ("bert", {"hidden_size": 30}, "not divisible by num_attention_heads=4"),
])
def test_impossible_targets_are_refused_naming_the_key(family, overrides, message, tmp_path):
    with pytest.raises(InterpruneError, match=message):
        shrink(saved(family, tmp_path), overrides, "select")


def test_a_smaller_vocabulary_than_the_tokenizer_is_refused(tmp_path):
    folder = saved("bert", tmp_path)
    small, _ = shrink(folder, {"vocab_size": 50}, "select")  # no tokenizer beside it: ids 0..49 kept
    assert small.embeddings.word_embeddings.weight.shape == (50, 32)
    (folder / "vocab.txt").write_text("\n".join(f"t{i}" for i in range(100)) + "\n")
    with pytest.raises(InterpruneError, match="vocab_size 50 is smaller than the source tokenizer's 100 tokens"):
        shrink(folder, {"vocab_size": 50}, "select")


# ------------------------------------------------------------------------ bad input: one line, exit 2


def run_cli(capsys, *argv):
    code = main(list(map(str, argv)))
    err = capsys.readouterr().err.strip()
    return code, err


@pytest.mark.parametrize("damage", ["truncated", "garbage", "missing"])
def test_broken_weights_are_one_line(damage, detr_dir, tmp_path, capsys):
    weights = detr_dir / "model.safetensors"
    if damage == "truncated":
        weights.write_bytes(weights.read_bytes()[:1000])
    elif damage == "garbage":
        weights.write_bytes(b"not a model at all" * 10)
    else:
        weights.unlink()
    code, err = run_cli(capsys, "shrink", detr_dir, "--set", "d_model=16", "--out", tmp_path / "out")
    assert code == 2 and err.count("\n") == 0 and err.startswith("interprune: error: ")
    assert ("no weights" if damage == "missing" else "cannot read the weights") in err
    assert not (tmp_path / "out").exists()


def test_unwritable_destinations_are_refused_before_work(detr_dir, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    code, err = run_cli(capsys, "shrink", detr_dir, "--out", tmp_path / "file" / "out")
    assert code == 2 and "is a file, not a folder" in err
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        code, err = run_cli(capsys, "shrink", detr_dir, "--out", locked / "out")
        if os.access(locked, os.W_OK):  # running as root: permissions do not apply
            pytest.skip("root can write anywhere")
        assert code == 2 and "is not writable" in err
    finally:
        locked.chmod(0o700)


def test_a_hub_id_without_network_fails_fast(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    started = time.time()
    code, err = run_cli(capsys, "shrink", "someone/no-such-model", "--out", tmp_path / "out")
    assert code == 2 and "cannot be reached" in err and time.time() - started < 5


def test_plan_command_prints_dimensions_with_sizes_and_axes(detr_dir, capsys):
    assert main(["plan", str(detr_dir), "--set", "d_model=16"]) == 0
    out = capsys.readouterr().out
    assert "residual  residual: 32 -> 16 (aligned with the sine position encoding)" in out
    assert "    model.input_projection.weight[0]" in out
    assert "head_dim  model.encoder.layers.0.self_attn.head_dim: 8 -> 4" in out
