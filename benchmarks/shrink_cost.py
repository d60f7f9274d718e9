"""Shrinking a full-size DETR should cost little more than loading it and saving it again.

Each job runs in its own process so peak memory (ru_maxrss) is its own; we report it both in total
and above the process's baseline after imports (torch + transformers alone take several hundred MB).

    python benchmarks/shrink_cost.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, resource, sys, time
import torch
from interprune.hf.models import load_model, save
from interprune.weights.shrink import shrink
torch.set_num_threads(2)
job, source, out = sys.argv[1:4]
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
if job == "load+save":
    save(load_model(source), out)
else:
    model, report = shrink(source, {"d_model": 128, "encoder_ffn_dim": 1024, "decoder_ffn_dim": 1024}, "area")
    save(model, out, report=report)
seconds = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"seconds": seconds, "peak_mb": peak / 1024, "above_imports_mb": (peak - base) / 1024}))
"""


def run(job: str, source: Path, out: Path) -> dict:
    done = subprocess.run([sys.executable, "-c", CHILD, job, str(source), str(out)],
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    from transformers import DetrConfig, DetrForObjectDetection

    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "detr-full"
        DetrForObjectDetection(DetrConfig(use_pretrained_backbone=False, num_labels=9)).save_pretrained(source)
        results: dict[str, list[dict]] = {"load+save": [], "shrink+save": []}
        for i in range(args.repeats):
            for job in results:
                results[job].append(run(job, source, Path(tmp) / f"{job}-{i}"))
    best = {job: min(rows, key=lambda r: r["seconds"]) for job, rows in results.items()}
    for job, row in best.items():
        print(f"{job:12s} {row['seconds']:6.2f} s   peak {row['peak_mb']:7.0f} MB"
              f"   above imports {row['above_imports_mb']:6.0f} MB   (best of {args.repeats})")
    base, ours = best["load+save"], best["shrink+save"]
    print(f"ratio shrink/load+save: time {ours['seconds'] / base['seconds']:.2f}x, "
          f"peak memory {ours['peak_mb'] / base['peak_mb']:.2f}x")


if __name__ == "__main__":
    main()
