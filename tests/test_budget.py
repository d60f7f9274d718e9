"""Shrink to a budget: parsing, exact costs on the meta device, the search's choice, its outputs, bad input."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import AutoModelForObjectDetection, DetrConfig, DetrForObjectDetection, DetrImageProcessor

from interprune.budget import LatencyCache, parse_budget, search, static_costs
from interprune.budget.space import candidate_overrides, knobs_for
from interprune.cli import main
from interprune.errors import InterpruneError
from interprune.hf.models import load_config
from interprune.hf.config import target_config

from .families import DETR, RESNET


@pytest.fixture(scope="module")
def resnet_detr(tmp_path_factory):
    """A tiny DETR whose backbone is a Hugging Face ResNet (stage widths and depths searchable), 64 px."""
    path = tmp_path_factory.mktemp("budget") / "detr-resnet"
    config = DetrConfig(**{**DETR, "backbone_config": {**RESNET, "hidden_sizes": [16, 32, 32, 32],
                                                       "embedding_size": 16, "depths": [2, 2, 1, 1]}})
    torch.manual_seed(0)
    DetrForObjectDetection(config).save_pretrained(path)
    DetrImageProcessor(size={"shortest_edge": 64, "longest_edge": 64}).save_pretrained(path)
    return path


def test_budgets_parse_relative_and_absolute():
    assert parse_budget("params=0.5") == parse_budget("params=0.5")
    b = parse_budget("params=0.5")
    assert (b.kind, b.value, b.relative, b.limit(1000)) == ("params", 0.5, True, 500)
    assert parse_budget("params=20M").value == 20e6 and not parse_budget("params=20M").relative
    assert parse_budget("flops=3.5G").value == 3.5e9
    assert parse_budget("latency=15ms").value == 15 and parse_budget("latency=0.2s").value == 200
    assert parse_budget("LATENCY=0.5").relative


@pytest.mark.parametrize("text, says", [("memory=0.5", "unknown budget kind 'memory'"), ("params", "kind=value"),
                                        ("params=big", "bad value"), ("latency=20", "give a unit"),
                                        ("flops=0", "positive")])
def test_bad_budgets_are_one_line(text, says):
    with pytest.raises(InterpruneError, match=says):
        parse_budget(text)


def test_meta_costs_equal_a_real_forward(resnet_detr):
    """Parameters and FLOPs counted on the meta device are those of the real model on a real image (eager
    attention in the reference: the counter has no formula for the CPU's fused attention kernel, and would miss
    the attention products there; on meta, attention is the same two matrix products as eager)."""
    config = load_config(resnet_detr)
    inputs = {"pixel_values": torch.randn(1, 3, 64, 64), "pixel_mask": torch.ones(1, 64, 64, dtype=torch.long)}
    model = DetrForObjectDetection._from_config(config, attn_implementation="eager").eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(**inputs)
    assert static_costs(config, inputs) == (sum(p.numel() for p in model.parameters()), counter.get_total_flops())


def test_candidates_keep_whole_heads_and_groups_and_round_widths():
    from transformers import LlamaConfig

    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=50)
    knobs = knobs_for(config, {"num_hidden_layers": 4})
    assert [k.name for k, _ in knobs] == ["residual", "ffn", "heads"]  # --set fixes the layers
    out = candidate_overrides(knobs, (0.75, 0.375, 0.5), multiple=8)
    assert out == {"hidden_size": 48, "intermediate_size": 48, "num_attention_heads": 2, "num_key_value_heads": 1}
    assert candidate_overrides(knobs, (0.75, 1.0, 1.0), multiple=64) == {"hidden_size": 64}
    detr = load_config_like_detr()
    assert "hidden_size" not in dict(knobs_for(detr, {})[0][1])  # an alias of d_model is not a second knob


def load_config_like_detr():
    return DetrConfig(**{**DETR, "backbone_config": RESNET})


def test_search_chooses_the_largest_fitting_candidate_with_set_fixed(resnet_detr):
    result = search(resnet_detr, [parse_budget("params=0.6")], fixed={"decoder_layers": 1}, max_candidates=12)
    limit = 0.6 * result.source.params
    fitting = [c for c in result.candidates if c.params <= limit]
    assert result.best.params == max(c.params for c in fitting) and result.best.params <= limit
    assert all(c.fits == (c.params <= limit) for c in result.candidates)
    assert all(c.overrides["decoder_layers"] == 1 for c in result.candidates)
    assert any(k.startswith("backbone_config.") for c in result.candidates for k in c.overrides)
    for c in result.candidates[:3]:  # every candidate's costs are exact
        config = target_config(load_config(resnet_detr), c.overrides)
        assert sum(p.numel() for p in DetrForObjectDetection(config).parameters()) == c.params


def test_latency_budget_bisects_checks_and_keeps_the_largest_that_fits(resnet_detr, monkeypatch):
    """With a deterministic clock (latency = 1 ms per MFLOP, the source 10% slower when measured alone):
    the search measures few candidates, and the interleaved check turns away a choice that only fit alone."""
    import importlib

    search_module = importlib.import_module("interprune.budget.search")  # the package exports a function of that name

    config = load_config(resnet_detr)
    inputs = {"pixel_values": torch.zeros(1, 3, 64, 64), "pixel_mask": torch.ones(1, 64, 64, dtype=torch.long)}
    source_flops = static_costs(config, inputs)[1]

    def fake(c, feed, **_):
        flops = static_costs(c, feed)[1]
        return flops / 1e6 * (1.1 if flops == source_flops else 1.0)

    monkeypatch.setattr(search_module, "measure_latency", fake)
    monkeypatch.setattr(search_module, "interleaved_latency",
                        lambda configs, feed, **_: [static_costs(c, feed)[1] / 1e6 for c in configs])
    result = search(resnet_detr, [parse_budget("latency=0.5")], max_candidates=24)
    assert result.measured < len(result.candidates)
    assert result.best.checked <= 0.5 and result.best.latency_ms <= result.limits["latency"]
    measured = [c for c in result.candidates if c.latency_ms is not None]
    truly = [c for c in measured if c.flops <= 0.5 * source_flops]
    assert result.best.params == max(c.params for c in truly)  # the largest that fits when measured honestly


def test_latencies_are_measured_once_then_read_from_the_cache(resnet_detr, tmp_path):
    from interprune.budget import measure_latency

    config = load_config(resnet_detr)
    inputs = {"pixel_values": torch.zeros(1, 3, 64, 64), "pixel_mask": torch.ones(1, 64, 64, dtype=torch.long)}
    first = measure_latency(config, inputs, threads=1, clock="cpu", cache=LatencyCache(tmp_path / "latency.json"))
    cache = LatencyCache(tmp_path / "latency.json")
    assert measure_latency(config, inputs, threads=1, clock="cpu", cache=cache) == first and cache.hits == 1
    assert measure_latency(config, inputs, threads=2, clock="cpu", cache=cache) != first or cache.hits == 1


def test_unreachable_and_contradicting_budgets_name_what_is_reachable(resnet_detr):
    with pytest.raises(InterpruneError, match=r"no candidate meets --budget params=0.01 .*smallest reachable is"):
        search(resnet_detr, [parse_budget("params=0.01")], max_candidates=4)
    with pytest.raises(InterpruneError, match=r"--set d_model=64 contradicts --budget params=0.5"):
        search(resnet_detr, [parse_budget("params=0.5")], fixed={"d_model": 64}, max_candidates=4)


def test_shrink_to_a_budget_writes_the_best_its_table_and_figure(resnet_detr, rocks_dir, tmp_path, capsys):
    out = tmp_path / "small"
    assert main(["shrink", str(resnet_detr), "--budget", "flops=0.5", "--method", "calibrated", "--calibration",
                 str(rocks_dir), "--calibration-size", "4", "--compensate", "--top-k", "2", "--candidates", "8",
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "top 2 scored on calibration data" in printed and "chosen: --set" in printed
    rows = list(csv.DictReader((out / "budget.csv").open()))
    scored = [r for r in rows if r["output_error"]]
    chosen = [r for r in rows if r["chosen"] == "True"]
    assert len(scored) == 2 and len(chosen) == 1
    assert float(chosen[0]["output_error"]) == min(float(r["output_error"]) for r in scored)
    assert (out / "budget.png").stat().st_size > 1000
    model = AutoModelForObjectDetection.from_pretrained(out)
    record = json.loads((out / "interprune.json").read_text())
    assert record["overrides"] == json.loads((out / "budget.json").read_text())["best"]["overrides"]
    assert sum(p.numel() for p in model.parameters()) == int(chosen[0]["params"])


def test_plan_with_a_budget_writes_nothing(resnet_detr, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["plan", str(resnet_detr), "--budget", "params=0.7", "--candidates", "8"]) == 0
    printed = capsys.readouterr().out
    assert "budget params=0.7" in printed and "chosen:" in printed
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("argv, says", [
    (["--budget", "speed=0.5"], "unknown budget kind 'speed'"),
    (["--budget", "latency=0.5", "--latency-device", "cuda:7"], "no CUDA device"),
    (["--budget", "params=0.001"], "smallest reachable"),
    (["--budget", "params=0.5", "--set", "d_model=64"], "contradicts --budget params=0.5"),
])
def test_bad_budget_input_is_one_line_and_exit_2(resnet_detr, tmp_path, capsys, argv, says):
    if "cuda:7" in argv and torch.cuda.device_count() > 7:
        pytest.skip("this machine has that device")
    assert main(["shrink", str(resnet_detr), "--out", str(tmp_path / "x"), "--candidates", "4", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert says in err and len(err.splitlines()) == 1
    assert not (tmp_path / "x").exists()


def test_a_timm_resnet_backbone_becomes_its_hugging_face_equivalent(rocks_dir, tmp_path):
    """The demo's ResNet-10-T: same stages as a Hugging Face ResNet, tensors copied, the deep stem and the
    average-pool shortcuts refit on data; stock from_pretrained loads the result."""
    from interprune.backbones import convert, hf_equivalent
    from interprune.budget import output_error
    from interprune.preserve.calibration import calibration_inputs
    from interprune.hf.processors import model_processor
    from interprune.hf.models import load_model
    from interprune.sources import shipped

    source = load_model(shipped("demo")).float().eval()
    config = hf_equivalent(source.config)
    resnet = config.backbone_config
    assert (resnet.model_type, resnet.layer_type, resnet.hidden_sizes, resnet.depths, resnet.embedding_size) == (
        "resnet", "basic", [64, 128, 256], [1, 1, 1], 64)
    inputs = calibration_inputs(rocks_dir, model_processor(shipped("demo")), count=6)
    plain, _ = convert(source, inputs, config, refit=False)
    model, done = convert(source, inputs, config)
    assert len(done["refit"]) == 9 and not done["skipped"]  # stem, 2 shortcuts, 6 block convolutions
    assert output_error(source, model, inputs) < 0.5 * output_error(source, plain, inputs)
    model.save_pretrained(tmp_path / "converted")
    loaded = AutoModelForObjectDetection.from_pretrained(tmp_path / "converted").eval()
    assert torch.equal(loaded(**inputs).logits, model(**inputs).logits)
    knobs = [k.name for k, _ in knobs_for(config, {})]
    assert "backbone.width" in knobs and "backbone.width" not in [k.name for k, _ in knobs_for(source.config, {})]


def test_a_timm_backbone_under_a_budget_needs_calibration(tmp_path, capsys):
    from interprune.sources import shipped

    assert main(["shrink", str(shipped("demo")), "--budget", "params=0.5", "--out", str(tmp_path / "x")]) == 2
    assert "give --calibration" in capsys.readouterr().err


def test_a_sweep_experiment_takes_a_budget_checked_with_its_line(tmp_path):
    from interprune.sweep.config import load_sweep, preset_path

    demo = load_sweep(preset_path("demo"))
    assert demo.experiment("small-budget-latency").budget == "latency=0.5"
    bad = tmp_path / "sweep.yaml"
    bad.write_text("source: demo\ntarget: {d_model: 64}\ndata: x\nexperiments:\n"
                   "  - {name: a, size: small, init: calibrated, budget: speed=2}\n")
    with pytest.raises(InterpruneError, match=r"sweep.yaml:5: .*unknown budget kind 'speed'"):
        load_sweep(bad)


@pytest.mark.parametrize("backbone", [
    dict(model_type="convnext", hidden_sizes=[16, 16, 32, 32], depths=[2, 1, 1, 2], out_features=["stage4"]),
    dict(model_type="swin", embed_dim=16, depths=[2, 1, 1, 2], num_heads=[2, 2, 4, 4], out_features=["stage4"],
         image_size=64, window_size=2),
])
def test_convnext_and_swin_backbones_are_searched_and_shrunk(backbone):
    from interprune.weights.shrink import shrink

    config = DetrConfig(**{**DETR, "backbone_config": backbone})
    torch.manual_seed(0)
    source = DetrForObjectDetection(config).eval()
    knobs = knobs_for(config, {})
    assert [k.name for k, _ in knobs][:2] == ["backbone.width", "backbone.depth"]
    overrides = candidate_overrides(knobs, (0.5, 0.5, 1.0, 1.0, 1.0, 1.0), multiple=8)
    small, report = shrink(source, overrides, "select")
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in source.parameters())
    kinds = {d["kind"] for d in report.plan["dimensions"]}
    assert "layers" in kinds and not report.plan["unplanned"]
