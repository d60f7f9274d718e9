"""What a teacher costs per training step: the demo's half-width student trained alone and with its full-size
teacher (the demo's source detector with a rocks head), same data, same seed, same steps.

    PYTHONPATH=src python benchmarks/distill_cost.py [--steps 20] [--out /tmp/distill-cost]

Prints, per setting, seconds per step (the whole training loop), the teacher's forward seconds per step as
measured inside the run, and the full model's own step time for comparison.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from interprune.data.rocks import NAMES
from interprune.data.domains import write_domain
from interprune.demo import DEMO_SOURCE
from interprune.hf.models import save
from interprune.weights.shrink import shrink
from interprune.hf.models import load_detector
from interprune.hf.processors import load_processor
from interprune.train.run import train
from interprune.hf.models import load_config
from interprune.train.settings import TrainSettings

SMALL = {"d_model": 64, "encoder_ffn_dim": 128, "decoder_ffn_dim": 128}  # the demo preset's target


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="distill-cost-"))
    shutil.rmtree(out, ignore_errors=True)
    data = write_domain("rocks", out / "rocks", train=20, valid=4, copies=1, size=160, seed=0)
    teacher = out / "teacher"
    processor = load_processor(DEMO_SOURCE, load_config(DEMO_SOURCE), 160)
    save(load_detector(DEMO_SOURCE, NAMES), teacher, processor=processor)
    model, report = shrink(str(teacher), SMALL, "select")
    save(model, out / "student", report=report, source=str(teacher), processor=processor)
    base = dict(steps=args.steps, val_every=args.steps, workers=0, image_size=160, log_every=args.steps)
    runs = [("full model alone", teacher, {}), ("student alone", out / "student", {}),
            ("student + teacher", out / "student", {"teacher": str(teacher)}),
            ("student + teacher + features", out / "student", {"teacher": str(teacher), "distill_features": 1.0})]
    print(f"{'run':<30} {'s/step':>8} {'teacher s/step':>15}")
    for name, model_dir, extra in runs:
        summary = train(model_dir, data, out / name.replace(" ", "-"), TrainSettings(**base, **extra), progress=False)
        per_step = summary["seconds"] / summary["steps"]
        t = (summary.get("teacher") or {}).get("seconds_per_step")
        print(f"{name:<30} {per_step:8.3f} {t if t is not None else '-':>15}", flush=True)


if __name__ == "__main__":
    main()
