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

    python benchmarks/deploy_speed.py [--device cpu|cuda] [--threads 1] [--clock cpu|wall] [--repeat 3] [--memory]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from transformers import DetrConfig, DetrForObjectDetection, DetrImageProcessor

from interprune.bench import Stopwatch, bench, dummy_inputs, file_mb, load_measured
from interprune.hf.models import count_parameters

SETTINGS = {"full": {}, "half": {"d_model": 128, "encoder_ffn_dim": 1024, "decoder_ffn_dim": 1024}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeat", type=int, default=3, help="timed rounds (each runs both models once)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--image-size", type=int, default=None)
    parser.add_argument("--memory", action="store_true", help="also measure peak memory (a process per model)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (default 1)")
    parser.add_argument("--clock", choices=["cpu", "wall"], default=None,
                        help="CPU time of the process or wall time (default: cpu on a CPU, wall on a GPU)")
    args = parser.parse_args()
    cuda = args.device.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    clock = time.process_time if (args.clock or ("wall" if cuda else "cpu")) == "cpu" else time.perf_counter
    torch.set_num_threads(args.threads)
    models, inputs, watches, times, rows = {}, {}, {}, {}, {}
    with tempfile.TemporaryDirectory() as tmp, torch.inference_mode():
        for name, overrides in SETTINGS.items():
            folder = Path(tmp) / name
            torch.manual_seed(0)
            config = DetrConfig(use_pretrained_backbone=False, num_labels=9, **overrides)
            DetrForObjectDetection(config).save_pretrained(folder)
            DetrImageProcessor().save_pretrained(folder)
            models[name] = load_measured(str(folder), config, torch.float32, args.device)
            one, described = dummy_inputs(config, str(folder), 1, image_size=args.image_size)
            inputs[name] = {k: v.to(args.device) for k, v in one.items()}
            watches[name] = Stopwatch(models[name].model.backbone, sync, clock)
            times[name] = []
            rows[name] = {"parameters": count_parameters(models[name]), "file": file_mb(str(folder))}
            if args.memory:
                measured = bench(folder, device=args.device, batch=2, warmup=0, repeat=1)
                rows[name]["memory"] = measured.peak_memory_mb
        for round_ in range(args.warmup + args.repeat):
            for name, model in models.items():
                sync()
                start = clock()
                model(**inputs[name])
                sync()
                if round_ >= args.warmup:
                    times[name].append(clock() - start)
            print(f"round {round_ + 1}/{args.warmup + args.repeat}: " + ", ".join(
                f"{n} {t[-1] * 1e3:.0f} ms" for n, t in times.items() if t), flush=True)
    threads = f"{torch.get_num_threads()} thread(s)" if not cuda else torch.cuda.get_device_name()
    kind = "CPU time" if clock is time.process_time else "wall time"
    print(f"\nDETR-R50, {described}, {args.device} ({threads}), batch 1, {kind}, median of {args.repeat} "
          "interleaved runs:")
    print("| model | parameters | weights on disk | latency | backbone (ResNet-50) | rest (transformer, heads) | "
          "backbone share |" + (" peak memory |" if args.memory else ""))
    print("|---|---|---|---|---|---|---|" + ("---|" if args.memory else ""))
    result = {}
    for name in models:
        backbones = watches[name].times[args.warmup:]
        latency = statistics.median(times[name]) * 1e3
        backbone = latency * statistics.median(b / t for b, t in zip(backbones, times[name]))  # share per run
        result[name] = (latency, backbone)
        memory = f" {rows[name]['memory']:.0f} MB |" if args.memory else ""
        print(f"| {name} | {rows[name]['parameters']:,} | {rows[name]['file']:.1f} MB | {latency:.0f} ms | "
              f"{backbone:.0f} ms | {latency - backbone:.0f} ms | {backbone / latency:.0%} |{memory}")
    (full, full_bb), (half, half_bb) = result["full"], result["half"]
    print(f"half-width speed-up: {full / half:.2f}x end to end, {(full - full_bb) / (half - half_bb):.2f}x outside "
          f"the backbone; the backbone is {full_bb / full:.0%} of the full model's time and {half_bb / half:.0%} of "
          "the half-width model's")


if __name__ == "__main__":
    main()
