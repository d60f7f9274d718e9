"""Streamed weights: a sharded checkpoint read lazily, the target written shard by shard (data-free)."""

import json

import pytest
import torch
from safetensors.torch import load_file

from interprune import InterpruneError
from interprune.cli import main
from interprune.hf.models import save
from interprune.weights.shrink import shrink
from interprune.stream import INDEX, Checkpoint, parse_size, stream_shrink

from .engine_cases import tiny_qwen

CUT = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 2}


@pytest.fixture
def sharded(tmp_path):
    folder = tmp_path / "source"
    tiny_qwen().to(torch.bfloat16).save_pretrained(folder, max_shard_size="20KB")
    assert (folder / INDEX).is_file()
    return folder


def tensors(folder):
    index = folder / INDEX
    files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.is_file() else [
        "model.safetensors"]
    out = {}
    for name in files:
        out.update(load_file(folder / name))
    return out


@pytest.mark.parametrize("method", ["select", "area", "magnitude"])
def test_streamed_shrink_of_a_sharded_checkpoint_equals_the_in_memory_result(sharded, tmp_path, method):
    streamed = tmp_path / "streamed"
    if method == "magnitude":  # a data-aware choice: not a streamed method
        with pytest.raises(InterpruneError, match="unknown method"):
            stream_shrink(sharded, CUT, method, streamed)
        return
    report = stream_shrink(sharded, CUT, method, streamed, max_shard_size=parse_size("10KB"))
    assert report is not None and (streamed / INDEX).is_file()
    model, expected = shrink(sharded, CUT, method)
    save(model, tmp_path / "memory", report=expected, source=sharded)
    a, b = tensors(streamed), tensors(tmp_path / "memory")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert {v.dtype for v in a.values()} == {torch.bfloat16}
    assert report.counts() == expected.counts() and report.choices == expected.choices
    from transformers import AutoModel

    loaded = AutoModel.from_pretrained(streamed)
    assert loaded.config.hidden_size == 16


def test_cli_streams_data_free_shrinks_and_refuses_a_missing_shard(sharded, tmp_path, capsys):
    assert main(["shrink", str(sharded), "--set", "hidden_size=16", "--out", str(tmp_path / "a"),
                 "--max-shard-size", "8KB"]) in (0, None)
    assert (tmp_path / "a" / INDEX).is_file()
    capsys.readouterr()
    shard = sorted(sharded.glob("model-*.safetensors"))[-1]
    shard.unlink()
    assert main(["shrink", str(sharded), "--set", "hidden_size=16", "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert shard.name in err and len(err.strip().splitlines()) == 1 and not (tmp_path / "b").exists()
    with pytest.raises(InterpruneError, match="not in"):
        Checkpoint(sharded)


def test_device_cuda_without_a_gpu_is_one_line(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert main(["shrink", "demo", "--method", "calibrated", "--calibration", "x.txt", "--device", "cuda",
                 "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "no GPU" in err and len(err.strip().splitlines()) == 1


def test_a_grown_target_is_not_streamed_and_leaves_nothing(sharded, tmp_path):
    """Growing with `first` needs the target's own initial values, which a meta target lacks: ``None``, no folder."""
    assert stream_shrink(sharded, {"intermediate_size": 96}, "first", tmp_path / "grown") is None
    assert not (tmp_path / "grown").exists() and not list(tmp_path.glob(".grown*"))


def test_a_memory_budget_below_one_boundary_is_one_line_naming_the_size(tmp_path):
    from .engine_cases import text_ids

    with pytest.raises(InterpruneError, match=r"too small for one block boundary.*give at least 2560B"):
        shrink(tiny_qwen(), {"hidden_size": 16}, "calibrated", calibration=text_ids(), calibration_batch=2, budget=10)


@pytest.mark.parametrize("family", ["tied", "fused", "renamed"])
def test_tied_fused_and_renamed_sources_stream_too(tmp_path, family):
    """A checkpoint leaves a tied copy out, fused q|k|v is filled part by part, and transformers 5 renames
    DETR's keys as it loads and saves (``backbone.conv_encoder``, ``out_proj``, ``layers.N.fc1``): none
    needs the target's own values, so all stream (no fall-back to memory) and equal the in-memory result,
    file names included."""
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    from .conftest import tiny_detr

    torch.manual_seed(0)
    if family == "renamed":
        model = tiny_detr()
        cut = {"d_model": 16, "encoder_ffn_dim": 32, "decoder_ffn_dim": 32}
    elif family == "tied":
        model = LlamaForCausalLM(LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                             num_attention_heads=4, num_key_value_heads=2, vocab_size=64,
                                             tie_word_embeddings=True))
        cut = {"hidden_size": 16, "intermediate_size": 32}
    else:
        model = GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=64, n_positions=32))
        cut = {"n_embd": 16}
    model.save_pretrained(tmp_path / "source")
    report = stream_shrink(tmp_path / "source", cut, "select", tmp_path / "streamed")
    assert report is not None  # streamed, not handed back to the in-memory path
    memory, expected = shrink(tmp_path / "source", cut, "select")
    save(memory, tmp_path / "memory", report=expected, source=tmp_path / "source")
    a, b = tensors(tmp_path / "streamed"), tensors(tmp_path / "memory")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # a tied output layer the checkpoint leaves out holds the embedding's values: not "initialised"
    assert report.counts() == expected.counts() and report.counts()["initialised"] == 0
    same = stream_shrink(tmp_path / "source", {}, "select", tmp_path / "same")
    assert same.counts()["resampled"] == same.counts()["initialised"] == 0
    if family == "renamed":  # the file keeps the names every release reads, as save_pretrained writes them
        assert any("conv_encoder" in k for k in a) and any(k.endswith("out_proj.weight") for k in a)


def test_tensor_files_are_written_as_tensors_arrive_and_read_by_safetensors(tmp_path):
    """The streamed writer declares every tensor first and writes each as it comes, in any order it comes;
    safetensors reads the shards back exactly, and our reader reads safetensors' own files exactly."""
    from safetensors.torch import save_file

    torch.manual_seed(0)
    values = {"a": torch.randn(3, 5), "b": torch.arange(7), "c": torch.randn(4).to(torch.bfloat16),
              "empty": torch.zeros(0, 3), "flag": torch.tensor([True, False]), "scalar": torch.tensor(2.5)}
    layout = [(name, v.dtype, tuple(v.shape)) for name, v in values.items()]
    from interprune.stream import ShardWriter

    writer = ShardWriter(tmp_path, 64, layout)
    for name in ["b", "a", "flag", "c", "scalar", "empty"]:  # out of order: each waits for its turn
        writer.add(name, values[name])
    writer.close()
    assert (tmp_path / INDEX).is_file()
    assert tensors(tmp_path).keys() == values.keys()
    assert all(torch.equal(tensors(tmp_path)[k], v) for k, v in values.items())
    save_file(values, tmp_path / "theirs.safetensors")
    folder = tmp_path / "theirs"
    folder.mkdir()
    (tmp_path / "theirs.safetensors").rename(folder / "model.safetensors")
    checkpoint = Checkpoint(folder)
    assert all(torch.equal(checkpoint[k], v) and checkpoint[k].dtype == v.dtype for k, v in values.items())
    with open(folder / "model.safetensors", "r+b") as f:
        f.truncate(f.seek(0, 2) - 4)
    with pytest.raises(InterpruneError, match="truncated"):
        Checkpoint(folder)
