"""Data-aware shrinking at the scale of real models: time and peak memory, each job in its own process.

Models are built here, offline, with random weights (cached under ``--work``):

* ``qwen251m``: a Qwen2-layout decoder (hidden 1024, FFN 2816, 16 layers, 16 query / 8 key-value heads,
  vocabulary 30,400, bf16; 251M parameters, 481 MB on disk) with a word-level tokenizer, cut to half width;
* ``qwen1b``: the same layout at hidden 2048, FFN 5632, 20 layers (1.07B parameters, 2.1 GB bf16), saved
  as 500 MB shards with an index, cut to half width;
* ``detr``: DETR-R50 (41.5M, float32) at the paper's cut (d_model 128, FFN 1024), images at 800 px.

Jobs: ``load+save`` (``from_pretrained`` + ``save_pretrained``: the floor), ``forward`` (one float32 forward
pass of the source over the calibration set, in mini-batches of ``--batch``: the time goal is stated against
it; timed after loading), ``select`` (data-free; streamed
from the checkpoint), ``calibrated`` and ``full`` (``calibrated --rotate --compensate``) at calibration
sizes of 256-token sequences (decoders) or 800 px images (DETR). ``--capped`` also shrinks ``qwen1b`` with
``select`` under a memory cap of half its checkpoint size (``/work/shared/tools/capmem``: a cgroup v1
memory group, when the machine allows one). Peak memory is the job's maximum resident set (``ru_maxrss``);
"added" subtracts the peak of a process that has only imported torch, transformers and interprune.
``--device cuda`` runs the data-aware jobs and ``forward`` on a GPU and adds the GPU's peak allocation; where
``capmem`` is missing (a GPU machine) jobs run without a cap.

    python benchmarks/scale.py [--models qwen251m,detr] [--jobs load+save,select,full] [--sizes 32,128]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

CAPMEM = "/work/shared/tools/capmem"
SIZES = {"qwen251m": (32, 128, 512), "qwen1b": (32, 128, 512), "detr": (8, 32, 128)}
CUTS = {"qwen251m": ["hidden_size=512", "intermediate_size=1408"],
        "qwen1b": ["hidden_size=1024", "intermediate_size=2816"],
        "detr": ["d_model=128", "encoder_ffn_dim=1024", "decoder_ffn_dim=1024"]}
VOCAB = 30400

CHILD = r"""
import json, os, resource, sys, time
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")  # as the command line sets it (allocator.huge_pages), for every job
import torch, transformers, interprune
from interprune.cli import main
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
job, source, out, extra = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
start = time.perf_counter()
if job == "imports":
    pass
elif job == "load+save":
    from interprune.hf.models import load_model
    load_model(source).save_pretrained(out, max_shard_size=extra.get("shard", "5GB"))
elif job == "forward":  # the source in float32 (as the recipe computes) over the calibration set, once
    from interprune.hf.models import load_model
    from interprune.hf.processors import model_processor
    from interprune.preserve.calibration import calibration_inputs
    from interprune.walk import Batches
    device = extra.get("device", "cpu")
    model = load_model(source, dtype=torch.float32).to(device)
    inputs = calibration_inputs(extra["data"], model_processor(source), count=extra["count"])
    start = time.perf_counter()
    with torch.no_grad():
        from interprune.preserve.calibration import auto_batch
        for batch in Batches.of(inputs, extra["batch"] or auto_batch(inputs)):
            model(**{k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()})
    if device != "cpu":
        torch.cuda.synchronize()
else:
    code = main(["shrink", source, "--out", out, *extra["args"]])
    assert code == 0, code
seconds = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
gpu = torch.cuda.max_memory_allocated() / 1e6 if torch.cuda.is_available() else 0.0
print(json.dumps({"seconds": seconds, "peak_mb": peak / 1024, "imports_mb": base / 1024, "gpu_mb": gpu}))
"""


def build_decoder(folder: Path, hidden: int, ffn: int, layers: int, shard: str) -> None:
    """A random Qwen2 causal LM in bf16 with a byte-level tokenizer."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM, Qwen2Tokenizer

    torch.manual_seed(0)
    config = Qwen2Config(hidden_size=hidden, intermediate_size=ffn, num_hidden_layers=layers, num_attention_heads=16,
                         num_key_value_heads=8, vocab_size=VOCAB, tie_word_embeddings=False,
                         max_position_embeddings=2048)
    with torch.device("cpu"):
        model = Qwen2ForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(folder, max_shard_size=shard)
    del model
    Qwen2Tokenizer(vocab=_byte_vocab(), merges=[]).save_pretrained(folder)


def _byte_vocab() -> dict[str, int]:
    """A byte-level vocabulary without merges: each letter of the calibration text is one token (the
    tokenizer's own end-of-text token takes the last id of the model's vocabulary)."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    vocab = {c: i for i, c in enumerate(bytes_to_unicode().values())}
    vocab.update({f"<x{i}>": i for i in range(len(vocab), VOCAB - 1)})
    return vocab


def build_detr(folder: Path) -> None:
    from transformers import DetrConfig, DetrForObjectDetection, DetrImageProcessor

    import torch

    torch.manual_seed(0)
    DetrForObjectDetection(DetrConfig(use_pretrained_backbone=False, num_labels=9)).save_pretrained(folder)
    DetrImageProcessor().save_pretrained(folder)


def calibration(work: Path, model: str, count: int) -> Path:
    """``count`` lines of 256 random letters (256 tokens each), or ``count`` random 800x1066 JPEG images."""
    import random

    rng = random.Random(count)
    if model != "detr":
        path = work / f"text-{count}.txt"
        if not path.exists():
            letters = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
            path.write_text("\n".join("".join(rng.choice(letters) for _ in range(256)) for _ in range(count)) + "\n")
        return path
    import numpy as np
    from PIL import Image

    folder = work / f"images-{count}"
    if not folder.exists():
        folder.mkdir()
        gen = np.random.default_rng(count)
        for i in range(count):
            pixels = (gen.random((800, 1066, 3)) * 255).astype("uint8")
            Image.fromarray(pixels).save(folder / f"{i:04d}.jpg", quality=90)
    return folder


def source(work: Path, model: str) -> Path:
    folder = work / model
    if not (folder / "config.json").exists():
        if model == "qwen251m":
            build_decoder(folder, 1024, 2816, 16, "5GB")
        elif model == "qwen1b":
            build_decoder(folder, 2048, 5632, 20, "500MB")
        else:
            build_detr(folder)
    return folder


def run(job: str, src: Path, out: Path, extra: dict, cap_mb: int) -> dict:
    """One job in its own process under ``capmem`` (the cap is a guard, or the point of a capped run)."""
    import shutil

    shutil.rmtree(out, ignore_errors=True)
    command = [sys.executable, "-c", CHILD, job, str(src), str(out), json.dumps(extra)]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    started = time.perf_counter()
    capped = os.path.exists(CAPMEM)  # a GPU machine has no capmem: the job runs without a cap there
    done = subprocess.run([CAPMEM, str(cap_mb), *command] if capped else command, capture_output=True, text=True,
                          env=env)
    row = {"job": job, "exit": done.returncode, "wall": time.perf_counter() - started,
           "cap": next((line for line in done.stderr.splitlines() if line.startswith("capmem: cap")), "")}
    if "no writable memory controller" in done.stderr or not capped:
        row["cap"] = "uncapped (no writable memory controller)" if capped else "uncapped (no capmem here)"
    if done.returncode == 0:
        row.update(json.loads(done.stdout.strip().splitlines()[-1]))
    else:
        row["error"] = (done.stderr.strip().splitlines() or ["?"])[-1][:200]
        row["trace"] = "\n".join(done.stderr.strip().splitlines()[-25:])
    shutil.rmtree(out, ignore_errors=True)
    return row


def show(model: str, label: str, row: dict, floor: float) -> None:
    if row["exit"] != 0:
        print(f"{model:9s} {label:34s} FAILED (exit {row['exit']}): {row.get('error', '')}", flush=True)
        if os.environ.get("SCALE_TRACE"):  # the whole end of the job's stderr, where no one can rerun it by hand
            print(row.get("trace", ""), flush=True)
        return
    added = row["peak_mb"] - floor
    gpu = f"  GPU peak {row['gpu_mb']:7.0f} MB" if row.get("gpu_mb") else ""
    print(f"{model:9s} {label:34s} {row['seconds']:8.1f} s  peak {row['peak_mb']:7.0f} MB  added {added:7.0f} MB{gpu}",
          flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", default="/tmp/interprune-scale")
    parser.add_argument("--models", default="qwen251m,detr")
    parser.add_argument("--jobs", default="load+save,select,calibrated,full")
    parser.add_argument("--sizes", default=None, help="calibration sizes (default: the issue's three per model)")
    parser.add_argument("--batch", type=int, default=None, help="--calibration-batch (default: shrink's own)")
    parser.add_argument("--cap-mb", type=int, default=10000, help="guard cap of every job (MB)")
    parser.add_argument("--memory-budget", default=None, help="--memory-budget of the data-aware jobs (e.g. 256MB: "
                        "stored activations past it go to disk)")
    parser.add_argument("--capped", action="store_true", help="also shrink qwen1b under half its size")
    parser.add_argument("--device", default="cpu", help="--device of the data-aware jobs and of forward (e.g. cuda)")
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    floor = run("imports", work, work / "none", {}, args.cap_mb)
    print(f"baseline: a process that imported torch, transformers and interprune peaks at {floor['peak_mb']:.0f} MB; "
          f"{floor['cap']}", flush=True)
    for model in args.models.split(","):
        src = source(work, model)
        sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else SIZES[model]
        shard = "500MB" if model == "qwen1b" else "5GB"
        for job in args.jobs.split(","):
            if job == "load+save":
                show(model, job, run(job, src, work / "out", {"shard": shard}, args.cap_mb), floor["peak_mb"])
            elif job == "select":
                extra = {"args": ["--method", "select", *sum((["--set", s] for s in CUTS[model]), [])]}
                show(model, job, run(job, src, work / "out", extra, args.cap_mb), floor["peak_mb"])
            elif job == "forward":
                for size in sizes:
                    extra = {"data": str(calibration(work, model, size)), "count": size, "batch": args.batch,
                             "device": args.device}
                    show(model, f"forward ({size})", run(job, src, work / "out", extra, args.cap_mb), floor["peak_mb"])
            else:
                for size in sizes:
                    options = ["--method", "calibrated"] + (["--rotate", "--compensate"] if job == "full" else [])
                    extra = {"args": [*options, *sum((["--set", s] for s in CUTS[model]), []),
                                      "--calibration", str(calibration(work, model, size)),
                                      "--calibration-size", str(size), "--device", args.device,
                                      *(["--calibration-batch", str(args.batch)] if args.batch else [])]}
                    if args.memory_budget:
                        extra["args"] += ["--memory-budget", args.memory_budget]
                    label = f"{' '.join(options[1:])} ({size}{', budget ' + args.memory_budget if args.memory_budget else ''}" \
                            f"{', ' + args.device if args.device != 'cpu' else ''})"
                    show(model, label, run(job, src, work / "out", extra, args.cap_mb), floor["peak_mb"])
    if args.capped:
        src = source(work, "qwen1b")
        size_mb = sum(f.stat().st_size for f in src.glob("*.safetensors")) / 1e6
        cap = int(size_mb / 2)
        extra = {"args": ["--method", "select", *sum((["--set", s] for s in CUTS["qwen1b"]), []),
                          "--max-shard-size", "200MB"]}
        row = run("select", src, work / "capped", extra, cap)
        print(f"capped: qwen1b checkpoint {size_mb:.0f} MB in shards, select under a cap of {cap} MB ({row['cap']})")
        show("qwen1b", f"select under {cap} MB cap", row, floor["peak_mb"])


if __name__ == "__main__":
    main()
