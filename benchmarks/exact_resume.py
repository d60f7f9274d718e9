"""A run stopped twice and resumed should give the metrics of an uninterrupted one; this prints how close.

On the CPU the rows are identical (the tests assert it). On a GPU, kernels that are not deterministic can
make them differ in the last digits; this script says by how much, for each precision given.

    python benchmarks/exact_resume.py [--accelerator gpu] [--precision 32-true bf16-mixed] [--steps 10]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from transformers import DetrConfig, DetrForObjectDetection, DetrImageProcessor

from interprune.data.rocks import NAMES, draw_rocks
from interprune.data.synthetic import write_dataset
from interprune.train.module import DetectionModule
from interprune.train.metrics import read_metrics
from interprune.train.run import train
from interprune.train.settings import TrainSettings

TINY = dict(backbone="mobilenetv3_small_050", use_pretrained_backbone=False, num_labels=3, d_model=32,
            encoder_ffn_dim=64, decoder_ffn_dim=64, encoder_layers=2, decoder_layers=2,
            encoder_attention_heads=4, decoder_attention_heads=4, num_queries=10)


class Stop(Exception):
    """Ends a run at once, after its last checkpoint, as a kill would."""


def stopped_at(step: int):
    original = DetectionModule.training_step

    def training_step(self, batch, batch_idx):
        if self.global_step == step:
            raise Stop
        return original(self, batch, batch_idx)

    return original, training_step


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--accelerator", default="cpu")
    parser.add_argument("--precision", nargs="+", default=["32-true"])
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp())
    data = write_dataset(base / "rocks", draw_rocks, NAMES, "rocks", train=12, valid=4, size=96, seed=0)
    torch.manual_seed(0)
    DetrForObjectDetection(DetrConfig(**TINY)).save_pretrained(base / "model")
    DetrImageProcessor(size={"shortest_edge": 96, "longest_edge": 128}).save_pretrained(base / "model")
    for precision in args.precision:
        settings = TrainSettings(steps=args.steps, val_every=3, workers=2, log_every=1, accelerator=args.accelerator,
                                 devices=1, precision=precision)
        started = time.perf_counter()
        whole = train(base / "model", data, base / f"whole-{precision}", settings, progress=False)
        took = time.perf_counter() - started
        for step in (args.steps // 2, args.steps - 2):
            original, stopping = stopped_at(step)
            DetectionModule.training_step = stopping
            try:
                train(base / "model", data, base / f"parts-{precision}", settings, resume=True, progress=False)
            except Stop:
                pass
            finally:
                DetectionModule.training_step = original
        parts = train(base / "model", data, base / f"parts-{precision}", settings, resume=True, progress=False)
        rows = [[{k: v for k, v in r.items() if k != "wall_time"} for r in read_metrics(base / f"{name}-{precision}")]
                for name in ("whole", "parts")]
        worst = max(abs(a[k] - b.get(k, float("nan"))) for a, b in zip(*rows) for k in a)
        print(f"{args.accelerator} {precision}: steps {[int(r['step']) for r in rows[1]]} in {parts.segments} segments; "
              f"rows identical: {rows[0] == rows[1]} (largest difference {worst:.3g}); final validation loss "
              f"{whole.final_val_loss:.6f} uninterrupted, {parts.final_val_loss:.6f} resumed; uninterrupted run {took:.1f} s")


if __name__ == "__main__":
    main()
