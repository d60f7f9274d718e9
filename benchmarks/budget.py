"""Shrink to a budget, measured: does the search find a DETR-R50 at half the latency, how long does it take,
and what does the k x k convolution refit keep when the backbone is cut?

* ``--part detr``: DETR-R50 with its ResNet-50 as a Hugging Face ``backbone_config`` (random weights: speed
  does not depend on the values; offline), 800 px, one thread. ``interprune plan``'s search with
  ``--budget latency=0.5`` (CPU time, a fresh cache) is timed; the chosen target and the full model are
  then measured again, interleaved (CPU time, median of ``--repeat`` rounds), independently of the search's
  own short runs, with their parameters and FLOPs.
* ``--part demo``: the search's cost on the demo's source (160 px), for ``params=0.5`` and ``latency=0.5``, with
  its timm ResNet-10-T backbone as it is (no width a config can set: what is reachable is printed) and as its
  Hugging Face ResNet equivalent (the search ``shrink --budget`` runs after converting it); then the whole
  scored ``shrink --budget latency=0.5`` of the demo preset (conversion, search, top candidates shrunk with
  the data-aware recipe on 32 images and scored).
* ``--part refit``: the demo's source (trained weights), its timm backbone converted to the Hugging Face
  equivalent (output error with tensors copied only, and after the refit), then its backbone widths halved: the
  relative output error (class logits and boxes) on 60 held-out images after ``select``, after ``calibrated
  --compensate`` refitting only linear layers and 1x1 convolutions (as before), and with the k x k refit (least
  squares over the input patches of every resized convolution).

    PYTHONPATH=src python benchmarks/budget.py [--part detr,demo,refit] [--repeat 3]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from pathlib import Path

import torch
from transformers import DetrConfig, DetrForObjectDetection, DetrImageProcessor, ResNetConfig

from interprune.budget import LatencyCache, output_error, parse_budget, search, static_costs
from interprune.budget.output import describe
from interprune.hf.models import build_model, load_config
from interprune.hf.config import target_config
from interprune.sources import shipped

RESNET50 = ResNetConfig(embedding_size=64, hidden_sizes=[256, 512, 1024, 2048], depths=[3, 4, 6, 3],
                        layer_type="bottleneck", out_features=["stage4"], downsample_in_bottleneck=True)


def detr_r50(folder: Path, size: int = 800) -> Path:
    torch.manual_seed(0)
    config = DetrConfig(use_pretrained_backbone=False, use_timm_backbone=False, backbone=None,
                        backbone_config=RESNET50.to_dict(), num_labels=9)
    DetrForObjectDetection(config).save_pretrained(folder)
    DetrImageProcessor(size={"shortest_edge": size, "longest_edge": 1333}).save_pretrained(folder)
    return folder


@torch.inference_mode()
def interleaved(configs: dict[str, DetrConfig], inputs: dict, repeat: int) -> dict[str, float]:
    """Median CPU milliseconds per image of each model, measured in alternating rounds (one thread)."""
    torch.set_num_threads(1)
    models = {n: build_model(c).eval() for n, c in configs.items()}
    times = {n: [] for n in models}
    for round_ in range(repeat + 1):
        for name, model in models.items():
            start = time.process_time()
            model(**inputs)
            if round_:
                times[name].append(time.process_time() - start)
    return {n: statistics.median(t) * 1e3 for n, t in times.items()}


def part_detr(tmp: Path, repeat: int) -> None:
    from interprune.bench import dummy_inputs

    folder = detr_r50(tmp / "detr-r50")
    start = time.perf_counter()
    result = search(folder, [parse_budget("latency=0.5")], threads=1, clock="cpu",
                    cache=LatencyCache(tmp / "latency.json"))
    seconds = time.perf_counter() - start
    print(describe(result))
    print(f"search: {seconds:.1f} s wall, {len(result.candidates)} candidates, {result.measured} latencies measured")
    config = load_config(folder)
    small = target_config(config, result.best.overrides)
    inputs, described = dummy_inputs(config, str(folder), 1)
    ms = interleaved({"full": config, "chosen": small}, inputs, repeat)
    print(f"\nDETR-R50, {described}, one thread, CPU time, median of {repeat} interleaved runs:")
    print("| model | parameters | GFLOPs | latency |")
    print("|---|---|---|---|")
    for name, c in (("full", config), ("chosen", small)):
        params, flops = static_costs(c, inputs)
        print(f"| {name} | {params:,} | {flops / 1e9:.1f} | {ms[name]:.0f} ms |")
    print(f"chosen / full latency: {ms['chosen'] / ms['full']:.2f}x (goal <= 0.5x)")


def part_demo(tmp: Path) -> None:
    from interprune.errors import InterpruneError

    from interprune.backbones import hf_equivalent

    equivalent = hf_equivalent(load_config(shipped("demo")))  # its timm backbone as a Hugging Face ResNet
    for text, config in (("params=0.5", None), ("latency=0.5", None), ("params=0.5", equivalent),
                         ("latency=0.5", equivalent)):
        start = time.perf_counter()
        try:
            result = search(shipped("demo"), [parse_budget(text)], threads=1, clock="cpu", config=config,
                            cache=LatencyCache(tmp / "demo-latency.json"))
            said = describe(result)
        except InterpruneError as err:
            said = f"refused: {err}"
        what = "its Hugging Face ResNet equivalent" if config is not None else "timm backbone as it is"
        print(f"demo source ({what}), --budget {text}: {time.perf_counter() - start:.1f} s wall\n  {said}")
    scored_demo_search(tmp)


def scored_demo_search(tmp: Path) -> None:
    """The whole ``shrink --budget latency=0.5`` of the demo preset's ``small-budget-latency``: conversion of
    its backbone (refit on 32 images), the search, and its top candidates each shrunk with ``calibrated
    --rotate --compensate`` and scored by their output error, in a fresh latency cache."""
    from interprune.budget.apply import shrink_to_budget
    from interprune.data.domains import write_domain

    write_domain("shapes", tmp / "scored-calib", train=32, valid=1, copies=1, size=160, seed=777)
    start = time.perf_counter()
    _, _, result = shrink_to_budget(shipped("demo"), [parse_budget("latency=0.5")], {}, "calibrated",
                                    calibration=tmp / "scored-calib", calibration_size=32, compensate=True,
                                    rotate=True, cache=LatencyCache(tmp / "scored-latency.json"), threads=1,
                                    clock="cpu")
    print(f"demo source, shrink --budget latency=0.5 --method calibrated --rotate --compensate, 32 images (conversion, "
          f"search and scoring of the top candidates): {time.perf_counter() - start:.1f} s wall\n  {describe(result)}")


def part_refit(tmp: Path) -> None:
    """What the k x k refit keeps, on trained weights: the demo's source (its timm backbone converted to the
    Hugging Face equivalent), 32 calibration and 60 held-out shapes images (its own domain), 160 px."""
    import interprune.preserve.compensate as comp
    from interprune.backbones import convert, hf_equivalent
    from interprune.preserve.calibration import calibration_inputs
    from interprune.hf.processors import model_processor
    from interprune.data.domains import write_domain
    from interprune.hf.models import load_model
    from interprune.weights.shrink import shrink

    for name, count, seed in (("calib", 32, 777), ("held", 60, 12345)):
        write_domain("shapes", tmp / name, train=count, valid=1, copies=1, size=160, seed=seed)
    processor = model_processor(shipped("demo"))
    calib = calibration_inputs(tmp / "calib", processor, count=32)
    held = calibration_inputs(tmp / "held", processor, count=60)
    source = load_model(shipped("demo")).float().eval()
    config = hf_equivalent(source.config)
    plain, _ = convert(source, calib, config, refit=False)
    converted, done = convert(source, calib, config)
    print(f"timm ResNet-10-T -> Hugging Face ResNet: output error on held-out images {output_error(source, plain, held):.3f} "
          f"with the tensors copied, {output_error(source, converted, held):.3f} after refitting {len(done['refit'])} "
          f"convolutions (stem 7x7, 3x3 blocks, strided 1x1 shortcuts)", flush=True)
    cut = {"backbone_config.hidden_sizes": [32, 64, 128], "backbone_config.embedding_size": 32}
    every = comp.refittable

    def only_1x1(module: torch.nn.Module) -> bool:
        if isinstance(module, torch.nn.Conv2d):
            return module.kernel_size == (1, 1) and module.stride == (1, 1) and module.groups == 1
        return every(module)

    for label, method, options, rule in (("select", "select", {}, every),
                                         ("calibrated + compensate, 1x1 only", "calibrated", {"compensate": True}, only_1x1),
                                         ("calibrated + compensate, k x k too", "calibrated", {"compensate": True}, every)):
        comp.refittable = rule
        start = time.perf_counter()
        kwargs = {"calibration": calib, **options} if method != "select" else {}
        small, _ = shrink(copy.deepcopy(converted), cut, method, **kwargs)
        print(f"backbone widths halved, {label}: output error on held-out images "
              f"{output_error(converted, small, held):.3f} ({time.perf_counter() - start:.0f} s)", flush=True)
    comp.refittable = every


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", default="detr,demo,refit")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for part in args.part.split(","):
            print(f"== {part}", flush=True)
            {"detr": lambda: part_detr(Path(tmp), args.repeat), "demo": lambda: part_demo(Path(tmp)),
             "refit": lambda: part_refit(Path(tmp))}[part]()


if __name__ == "__main__":
    main()
