"""How much faster is the paper's half-width DETR-R50 at inference? Measured, on this machine.

Builds the paper's setting offline with random weights (speed does not depend on the values):
``DetrConfig(use_pretrained_backbone=False, num_labels=9)`` (full: d_model 256, FFN 2048) and the half-width
transformer (d_model 128, FFN 1024), saved with DETR's stock image processor (800 px shortest edge, the size the
paper's 416 px images are resized to). Time per image at batch 1 and the time inside the (unchanged)
ResNet-50 backbone (forward hooks) come from runs of the two models *interleaved*, so that load from other
processes hits both alike. On a CPU the clock is, by default, the process's CPU time (``--clock cpu``): on a
machine shared with other work, wall time measures the neighbours as much as the model, while CPU time with
``--threads 1`` is what one dedicated core would take. ``--clock wall`` gives wall-clock latency (use it on an
idle machine or a GPU). ``--memory`` adds ``interprune bench``'s peak-memory measurement.
``--runtime onnxruntime`` (or ``both``) also exports each model with ``interprune export`` (timed: the export
alone and the whole command with its check) and times the ONNX model in ONNX Runtime, interleaved with the rest.

    python benchmarks/deploy_speed.py [--device cpu|cuda] [--threads 1] [--clock cpu|wall] [--repeat 3] [--memory]
                                      [--runtime torch|onnxruntime|both]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch
from transformers import DetrConfig, DetrForObjectDetection, DetrImageProcessor

from interprune.bench import Stopwatch, bench, dummy_inputs, file_mb, load_measured
from interprune.hf.models import count_parameters, load_config

SETTINGS = {"full": {}, "half": {"d_model": 128, "encoder_ffn_dim": 1024, "decoder_ffn_dim": 1024}}
DEMO = {"full": {}, "half": {"d_model": 64, "encoder_ffn_dim": 128, "decoder_ffn_dim": 128}}  # the demo preset's


def build(model: str, name: str, folder: Path) -> None:
    """Write one model folder: DETR-R50 with random weights from its config, or the demo's source and its cut."""
    if model == "demo":
        from interprune.hf.models import save
        from interprune.weights.shrink import shrink
        from interprune.sources import resolve_source

        if not DEMO[name]:
            shutil.copytree(resolve_source("demo"), folder)
            return
        shrunk, report = shrink(resolve_source("demo"), DEMO[name], "area")
        save(shrunk, folder, report=report, source=resolve_source("demo"))  # with its 160 px processor
        return
    torch.manual_seed(0)
    config = DetrConfig(use_pretrained_backbone=False, num_labels=9, **SETTINGS[name])
    DetrForObjectDetection(config).save_pretrained(folder)
    DetrImageProcessor().save_pretrained(folder)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeat", type=int, default=3, help="timed rounds (each runs both models once)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--image-size", type=int, default=None)
    parser.add_argument("--memory", action="store_true", help="also measure peak memory (a process per model)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (default 1)")
    parser.add_argument("--clock", choices=["cpu", "wall"], default=None,
                        help="CPU time of the process or wall time (default: cpu on a CPU, wall on a GPU)")
    parser.add_argument("--model", choices=["detr-r50", "demo"], default="detr-r50",
                        help="DETR-R50 and the paper's cut (default), or the demo's source and its half-width cut")
    parser.add_argument("--runtime", choices=["torch", "onnxruntime", "both"], default="torch",
                        help="eager PyTorch (default), ONNX Runtime after 'interprune export', or both")
    return parser.parse_args()


def prepare(args: argparse.Namespace, tmp: str, sync, clock) -> tuple[dict, dict, dict, dict, dict, str]:
    """Build, load and (optionally) export both models; a stopwatch on each backbone splits its time."""
    models, inputs, watches, rows, runners = {}, {}, {}, {}, {}
    for name in SETTINGS:
        folder = Path(tmp) / name
        with torch.inference_mode(False):
            build(args.model, name, folder)
        config = load_config(folder)
        models[name] = load_measured(str(folder), config, torch.float32, args.device)
        one, described = dummy_inputs(config, str(folder), 1, image_size=args.image_size)
        inputs[name] = {k: v.to(args.device) for k, v in one.items()}
        watches[name] = Stopwatch(models[name].model.backbone, sync, clock)  # (Conditional) DETR's backbone
        rows[name] = {"parameters": count_parameters(models[name]), "file": file_mb(str(folder))}
        if args.memory:
            measured = bench(folder, device=args.device, batch=2, warmup=0, repeat=1)
            rows[name]["memory"] = measured.peak_memory_mb
        if args.runtime != "torch":
            add_onnx(name, folder, args, runners, rows, inputs[name])
        if args.runtime == "onnxruntime":
            del models[name]
    return models, inputs, watches, rows, runners, described


def time_rounds(calls: dict, args: argparse.Namespace, sync, clock) -> dict[str, list[float]]:
    """Interleaved rounds (every model once per round), so drift in the machine's speed hits all alike."""
    times: dict[str, list[float]] = {name: [] for name in calls}
    for round_ in range(args.warmup + args.repeat):
        for name, call in calls.items():
            sync()
            start = clock()
            call()
            sync()
            if round_ >= args.warmup:
                times[name].append(clock() - start)
        print(f"round {round_ + 1}/{args.warmup + args.repeat}: " + ", ".join(
            f"{n} {t[-1] * 1e3:.0f} ms" for n, t in times.items() if t), flush=True)
    return times


def print_table(args, models, watches, rows, runners, times) -> dict[str, tuple[float, float | None]]:
    """One row per model: latency, and for PyTorch the backbone's share of it."""
    print("| model | parameters | weights on disk | latency | backbone | rest (transformer, heads) | "
          "backbone share |" + (" peak memory |" if args.memory else ""))
    print("|---|---|---|---|---|---|---|" + ("---|" if args.memory else ""))
    result = {}
    for name in models:
        backbones = watches[name].times[-len(times[name]):]  # the timed rounds (the export's runs came earlier)
        latency = statistics.median(times[name]) * 1e3
        backbone = latency * statistics.median(b / t for b, t in zip(backbones, times[name]))  # share per run
        result[name] = (latency, backbone)
        memory = f" {rows[name]['memory']:.0f} MB |" if args.memory else ""
        print(f"| {name} | {rows[name]['parameters']:,} | {rows[name]['file']:.1f} MB | {latency:.0f} ms | "
              f"{backbone:.0f} ms | {latency - backbone:.0f} ms | {backbone / latency:.0%} |{memory}")
    for name in runners:
        latency = statistics.median(times[name]) * 1e3
        result[name] = (latency, None)
        print(f"| {name} | {rows[name]['parameters']:,} | {rows[name]['file']:.1f} MB | {latency:.0f} ms | - | - | - |"
              + (" - |" if args.memory else ""))
        print(f"  (export: {rows[name]['export_s']:.1f} s to trace, convert and save; {rows[name]['command_s']:.1f} s "
              f"with loading and the check; exporter {rows[name]['exporter']})")
    return result


def main() -> None:
    args = parse_args()
    cuda = args.device.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    clock = time.process_time if (args.clock or ("wall" if cuda else "cpu")) == "cpu" else time.perf_counter
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp, torch.inference_mode():
        models, inputs, watches, rows, runners, described = prepare(args, tmp, sync, clock)
        calls = {**{n: (lambda m=m, n=n: m(**inputs[n])) for n, m in models.items()}, **runners}
        times = time_rounds(calls, args, sync, clock)
    threads = f"{torch.get_num_threads()} thread(s)" if not cuda else torch.cuda.get_device_name()
    kind = "CPU time" if clock is time.process_time else "wall time"
    print(f"\n{'DETR-R50' if args.model == 'detr-r50' else 'demo source'}, {described}, {args.device} ({threads}), "
          f"batch 1, {kind}, median of {args.repeat} interleaved runs:")
    result = print_table(args, models, watches, rows, runners, times)
    if runners:
        summarise_runtimes(result)
    if "full" not in models:
        return
    (full, full_bb), (half, half_bb) = result["full"], result["half"]
    print(f"half-width speed-up: {full / half:.2f}x end to end, {(full - full_bb) / (half - half_bb):.2f}x outside "
          f"the backbone; the backbone is {full_bb / full:.0%} of the full model's time and {half_bb / half:.0%} of "
          "the half-width model's")


def add_onnx(name: str, folder: Path, args: argparse.Namespace, runners: dict, rows: dict, inputs: dict) -> None:
    """Export ``folder`` with ``interprune export`` (timed) and add an ONNX Runtime session to the timed calls."""
    from interprune.deploy.export import ONNX_FILE, export_onnx
    from interprune.deploy.ortbench import initializer_elements, onnx_mb
    from interprune.deploy.runtime import feed, session

    out = folder.parent / f"{name}-onnx"
    with torch.inference_mode(False):
        start = time.perf_counter()
        report = export_onnx(folder, out, image_size=args.image_size)
        command_s = time.perf_counter() - start
    print(report.summary(), flush=True)
    runner = session(out / ONNX_FILE, args.device, args.threads)
    arrays = feed(runner, {k: v.cpu() for k, v in inputs.items()})
    key = f"{name} (onnxruntime)"
    runners[key] = lambda: runner.run(None, arrays)
    rows[key] = {"parameters": initializer_elements(out / ONNX_FILE), "file": onnx_mb(out / ONNX_FILE),
                 "export_s": report.seconds, "command_s": command_s, "exporter": report.exporter.split(",")[0]}


def summarise_runtimes(result: dict) -> None:
    """ONNX Runtime against eager PyTorch per model, and the half-width cut's speed-up in each runtime."""
    for name in ("full", "half"):
        if name in result and f"{name} (onnxruntime)" in result:
            print(f"{name}: ONNX Runtime {result[name][0] / result[f'{name} (onnxruntime)'][0]:.2f}x as fast as "
                  "eager PyTorch")
    for runtime in ("", " (onnxruntime)"):
        if f"full{runtime}" in result and f"half{runtime}" in result:
            print(f"half-width speed-up{runtime or ' (torch)'}: "
                  f"{result[f'full{runtime}'][0] / result[f'half{runtime}'][0]:.2f}x end to end")


if __name__ == "__main__":
    main()
