"""The one home for Hugging Face: config fields and rebuilds, dummy inputs, processors, models."""

from __future__ import annotations

import json

import pytest
import torch
import transformers as T
from torch import nn

from interprune.errors import InterpruneError
from interprune.hf.config import hidden_size, parse_overrides, target_config, without_storage
from interprune.hf.inputs import check_target, dummy_inputs
from interprune.hf.models import build_model, check_detector, count_parameters, fingerprint, is_detector, save
from interprune.hf.processors import copy_processor_files, load_processor, model_processor, tokenizer_size


def test_hidden_size_whatever_the_config_calls_it():
    assert hidden_size(T.BertConfig(hidden_size=48)) == 48
    assert hidden_size(T.DetrConfig(d_model=96, use_pretrained_backbone=False)) == 96
    assert hidden_size(T.GPT2Config(n_embd=40)) == 40
    assert hidden_size(object()) is None


def test_without_storage_drops_paths_versions_and_dtypes_at_any_depth():
    config = {"_name_or_path": "x", "transformers_version": "5", "dtype": "float16", "d_model": 8,
              "backbone_config": {"torch_dtype": "float32", "depths": [1, 2]}, "list": [{"dtype": 1, "a": 2}]}
    assert without_storage(config) == {"d_model": 8, "backbone_config": {"depths": [1, 2]}, "list": [{"a": 2}]}


def test_parse_overrides_reads_json_where_it_parses():
    assert parse_overrides(["d_model=128", 'id2label={"0": "a"}', "activation=gelu", "x.y=[1,2]"]) == {
        "d_model": 128, "id2label": {"0": "a"}, "activation": "gelu", "x.y": [1, 2]}
    with pytest.raises(InterpruneError, match="--set 'd_model' is not key=value"):
        parse_overrides(["d_model"])


def test_target_config_derives_again_what_the_class_derives_and_keeps_what_was_set():
    llama = T.LlamaConfig(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, intermediate_size=32,
                          num_hidden_layers=1, vocab_size=50)
    assert llama.head_dim == 16
    assert target_config(llama, {"hidden_size": 32}).head_dim == 8  # follows the width
    assert target_config(llama, {"hidden_size": 32, "head_dim": 16}).head_dim == 16  # set: kept
    with pytest.raises(InterpruneError, match="num_key_value_heads=3 does not divide"):
        target_config(llama, {"num_key_value_heads": 3})
    with pytest.raises(InterpruneError, match="unknown config key 'banana'"):
        target_config(llama, {"banana": 1})


def test_dummy_inputs_are_the_smallest_of_each_modality():
    bert = build_model(T.BertConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                                    vocab_size=3), meta=True)
    assert dummy_inputs(bert)["input_ids"].tolist() == [[1, 2, 2, 1]]  # ids clamped into a 3-token vocabulary
    vit = build_model(T.ViTConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                                  image_size=32, patch_size=8), meta=True)
    assert list(dummy_inputs(vit)) == ["pixel_values"] and dummy_inputs(vit)["pixel_values"].shape == (1, 3, 32, 32)


def test_check_target_turns_a_failing_forward_into_one_line_naming_the_keys():
    model = build_model(T.BertConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                                     vocab_size=10))
    check_target(model, {})  # runs

    def broken(input_ids=None, **kwargs):
        raise RuntimeError("shapes do not match\nsecond line")

    model.forward = broken
    with pytest.raises(InterpruneError, match=r"fails on a dummy input \(shapes do not match second line\); "
                                              r"change hidden_size"):
        check_target(model, {"hidden_size": 16})


def test_detectors_and_the_one_line_for_other_models():
    assert is_detector(T.DetrConfig(use_pretrained_backbone=False)) and not is_detector(T.BertConfig())
    with pytest.raises(InterpruneError, match="^--teacher bert-folder is a bert model, not an object-detection"):
        check_detector(T.BertConfig(), "bert-folder", "--teacher ")


def test_count_parameters_counts_tied_weights_once():
    shared = nn.Linear(4, 4)
    assert count_parameters(nn.Sequential(shared, shared, nn.Linear(4, 2, bias=False))) == 20 + 8


def test_tokenizer_size_from_each_kind_of_vocabulary_file(tmp_path):
    assert tokenizer_size(tmp_path) is None
    (tmp_path / "vocab.txt").write_text("a\nb\nc\n")
    assert tokenizer_size(tmp_path) == 3
    (tmp_path / "tokenizer.json").write_text(json.dumps({"model": {"vocab": {"a": 0, "b": 1}},
                                                         "added_tokens": [{"id": 9}]}))
    assert tokenizer_size(tmp_path) == 10  # the highest id counts, added tokens included
    assert tokenizer_size("not-a-folder") is None


def test_processor_files_travel_and_a_default_processor_takes_the_image_size(tmp_path):
    source, dest = tmp_path / "source", tmp_path / "dest"
    source.mkdir(), dest.mkdir()
    for name in ("preprocessor_config.json", "vocab.txt", "model.safetensors", "notes.md"):
        (source / name).write_text("{}")
    copy_processor_files(source, dest)
    assert sorted(p.name for p in dest.iterdir()) == ["preprocessor_config.json", "vocab.txt"]
    processor = load_processor(None, T.DetrConfig(use_pretrained_backbone=False), image_size=300)
    assert processor.size == {"shortest_edge": 300, "longest_edge": 500}
    with pytest.raises(InterpruneError, match="has no image processor or tokenizer files"):
        model_processor(tmp_path / "dest-empty")


def test_fingerprint_names_what_a_folder_computes_not_where_it_was_stored(tmp_path):
    config = T.BertConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                          vocab_size=10)
    model = build_model(config, seed=3)
    a, b = save(model, tmp_path / "a"), save(model, tmp_path / "b")
    other = json.loads((b / "config.json").read_text())
    (b / "config.json").write_text(json.dumps({**other, "_name_or_path": "elsewhere", "transformers_version": "0"}))
    assert fingerprint(a) == fingerprint(b) is not None
    with torch.no_grad():
        model.pooler.dense.bias[0] += 1
    assert fingerprint(save(model, tmp_path / "c")) != fingerprint(a)
    assert fingerprint("some/hub-id") is None
