"""How much faster is the paper's half-width DETR-R50 at inference? Measured, on this machine.

Builds the paper's setting offline with random weights (speed does not depend on the values):
``DetrConfig(use_pretrained_backbone=False, num_labels=9)`` (full: d_model 256, FFN 2048) and the half-width
transformer (d_model 128, FFN 1024), saves both with DETR's stock image processor (800 px shortest edge, the
size the paper's 416 px images are resized to) and measures them with ``interprune bench``: latency at batch 1,
the time inside the (unchanged) ResNet-50 backbone, throughput and peak memory.

    python benchmarks/deploy_speed.py [--device cpu|cuda] [--repeat 5] [--batch 2] [--image-size 800]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from transformers import DetrConfig, DetrForObjectDetection, DetrImageProcessor

from interprune.bench import bench

SETTINGS = {"full": {}, "half": {"d_model": 128, "encoder_ffn_dim": 1024, "decoder_ffn_dim": 1024}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--image-size", type=int, default=None)
    parser.add_argument("--no-memory", action="store_true")
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, overrides in SETTINGS.items():
            folder = Path(tmp) / name
            torch.manual_seed(0)
            DetrForObjectDetection(DetrConfig(use_pretrained_backbone=False, num_labels=9, **overrides)).save_pretrained(folder)
            DetrImageProcessor().save_pretrained(folder)
            results[name] = bench(folder, device=args.device, batch=args.batch, warmup=args.warmup,
                                  repeat=args.repeat, image_size=args.image_size, memory=not args.no_memory)
            print(f"--- {name}\n{results[name].summary()}", flush=True)
    full, half = results["full"], results["half"]
    print(f"\nDETR-R50, {full.inputs}, {full.device}, batch 1 (median of {full.runs}/{half.runs} runs):")
    print("| model | parameters | latency | backbone | rest (transformer, heads) | backbone share | "
          f"throughput (batch {full.batch}) | peak memory |")
    print("|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        memory = f"{r.peak_memory_mb:.0f} MB" if r.peak_memory_mb is not None else "-"
        print(f"| {name} | {r.parameters:,} | {r.latency_ms:.0f} ms | {r.backbone_ms:.0f} ms | "
              f"{r.latency_ms - r.backbone_ms:.0f} ms | {r.backbone_share:.0%} | {r.throughput:.2f}/s | {memory} |")
    rest = (full.latency_ms - full.backbone_ms) / (half.latency_ms - half.backbone_ms)
    print(f"half-width speed-up: {full.latency_ms / half.latency_ms:.2f}x end to end, {rest:.2f}x outside the "
          f"backbone; the backbone is {full.backbone_share:.0%} of the full model's time")


if __name__ == "__main__":
    main()
