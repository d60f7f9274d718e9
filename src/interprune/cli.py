"""Command line: a thin layer that parses arguments and calls the library."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from .errors import InterpruneError


def run_methods(args: argparse.Namespace) -> None:
    from .methods import METHODS

    width = max(map(len, METHODS))
    for method in METHODS.values():
        print(f"{method.name:<{width}}  {method.description}")


def run_shrink(args: argparse.Namespace) -> None:
    import torch

    from .hf.config import parse_overrides
    from .hf.models import check_writable, save
    from .methods import check_options
    from .plan import plan_summary
    from .progress import progress_printer
    from .stream import Checkpoint, parse_size, stream_shrink

    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise InterpruneError(f"{out} already exists; choose another --out or pass --overwrite")
    check_writable(out)
    dtype = getattr(torch, args.dtype) if args.dtype else None
    recovery = _shrink_recovery(args)
    budgets = _budgets(args)
    shard = parse_size(args.max_shard_size)
    data_aware = check_options(args.method, calibration=args.calibration is not None, compensate=args.compensate,
                               layers=args.layers, rotate=args.rotate)
    report, result = None, None
    if not budgets and not data_aware and Checkpoint.found(args.source):
        report = stream_shrink(args.source, parse_overrides(args.set), args.method, out, seed=args.seed, dtype=dtype,
                               max_shard_size=shard, overwrite=args.overwrite, progress=progress_printer("tensors"))
    if report is None:
        model, report, result = _shrink_for(args, budgets, dtype)
        save(model, out, report=report, source=args.source, overwrite=args.overwrite, max_shard_size=shard)
    if result is not None:
        from .budget.output import write_outputs

        write_outputs(result, out)
        print(f"wrote {out}/budget.csv (every candidate), budget.json, budget.png (quality against cost)")
    print(report.summary())
    print(plan_summary(report.plan))
    kept = report.preserved
    if kept:
        layers = "; ".join(f"{stack} keeps source layers {index}" for stack, index in kept["layers"].items())
        print(f"{kept['method']}: {len(report.choices)} dimensions chosen, {len(kept['rotated'])} rotated, {len(kept['compensated'])} layers refit on {kept['calibration_examples']} calibration "
              f"examples" + (f"; {layers}" if layers else ""))
    print(f"wrote {out}/ (config.json, model.safetensors, interprune.json)")
    if recovery is not None:
        from .recover import recover

        data, settings = recovery
        _print_recovery(recover(out, args.source, data, out, settings, overwrite=True), out)  # in place


def _shrink_for(args: argparse.Namespace, budgets, dtype):
    """The shrink itself: to the budgets when given (the search chooses what ``--set`` leaves open), else to
    the config ``--set`` describes. Returns the model, its report and the search's result (or None)."""
    from .hf.config import parse_overrides
    from .progress import progress_printer
    from .stream import parse_size
    from .weights.shrink import shrink

    options = dict(calibration=args.calibration, calibration_size=args.calibration_size, seed=args.seed,
                   compensate=args.compensate, rotate=args.rotate, layers=args.layers, dtype=dtype)
    batch = "auto" if args.calibration_batch is None else args.calibration_batch
    engine = dict(calibration_batch=batch, device=args.device, progress=progress_printer("stages"),
                  budget=parse_size(args.memory_budget) if args.memory_budget else None)
    if not budgets:
        model, report = shrink(args.source, parse_overrides(args.set), args.method, **options, **engine)
        return model, report, None
    from .budget.apply import shrink_to_budget
    from .budget.output import describe

    model, report, result = shrink_to_budget(args.source, budgets, parse_overrides(args.set), args.method,
                                             cache=_latency_cache(args), engine=engine, **options,
                                             **_search_options(args))
    print(describe(result))
    return model, report, result


def _shrink_recovery(args: argparse.Namespace):
    """``shrink --recover N``: its data and settings, checked before the shrink does any work."""
    if args.recover is None:
        if args.recover_data:
            raise InterpruneError("--recover-data is read only with --recover N; add it or drop --recover-data")
        return None
    from .hf.processors import model_processor
    from .recover.data import open_unlabelled

    if args.recover < 1:
        raise InterpruneError(f"--recover {args.recover}: give the number of recovery steps, at least 1")
    data = args.recover_data or args.calibration
    if not data:
        raise InterpruneError("--recover needs unlabelled inputs: pass --recover-data DATA (or --calibration DATA)")
    settings = _recover_settings(args, steps=args.recover)
    open_unlabelled(data, model_processor(args.source), held_out=settings.held_out, seed=settings.seed)
    return data, settings


def run_plan(args: argparse.Namespace) -> None:
    from .hf.config import parse_overrides
    from .weights.shrink import plan_for

    budgets = _budgets(args)
    overrides = parse_overrides(args.set)
    if budgets:
        from .budget.apply import search_plan
        from .budget.output import describe

        result, plan, note = search_plan(args.source, budgets, overrides, cache=_latency_cache(args),
                                         **_search_options(args))
        print(describe(result) + (f"\n{note}" if note else ""))
        print(plan.describe())
        return
    print(plan_for(args.source, overrides).describe())


def _budgets(args: argparse.Namespace) -> list:
    """The parsed ``--budget`` values, checked (kind, value, device) before any work."""
    from .budget import check_device, parse_budget

    budgets = [parse_budget(text) for text in args.budget]
    if any(b.kind == "latency" for b in budgets):
        check_device(args.latency_device)
    if args.multiple < 1 or args.top_k < 1 or args.candidates < 1:
        raise InterpruneError("--multiple, --top-k and --candidates must be at least 1")
    return budgets


def _search_options(args: argparse.Namespace) -> dict:
    return dict(multiple=args.multiple, top_k=args.top_k, device=args.latency_device, threads=args.threads,
                clock=args.clock, image_size=args.image_size, max_candidates=args.candidates)


def _latency_cache(args: argparse.Namespace):
    from .budget import LatencyCache, default_cache

    return LatencyCache(None if args.no_cache else default_cache())


def add_budget_arguments(p: argparse.ArgumentParser) -> None:
    """``--budget`` and the search's options, shared by ``shrink`` and ``plan``."""
    p.add_argument("--budget", action="append", default=[], metavar="KIND=VALUE",
                   help="search the target that fits: params=0.5 (a fraction of the source), params=20M, "
                   "flops=0.5, flops=30G, latency=0.5, latency=15ms; repeatable; --set values stay fixed")
    p.add_argument("--multiple", type=int, default=8, help="round searched widths to this multiple (default 8; "
                   "64 suits tensor cores)")
    p.add_argument("--top-k", type=int, default=3, help="candidates that fit scored on --calibration (default 3)")
    p.add_argument("--candidates", type=int, default=96, help="at most this many candidates (default 96)")
    p.add_argument("--latency-device", default="cpu", help="where --budget latency= is measured (default cpu)")
    p.add_argument("--threads", type=int, help="CPU threads for the latency runs (default: torch's)")
    p.add_argument("--clock", default="wall", choices=["wall", "cpu"], help="wall time or the process's CPU time "
                   "for latency (cpu: robust on a shared machine, with --threads 1)")
    p.add_argument("--image-size", type=int, help="image side for costs (default: the processor's)")
    p.add_argument("--no-cache", action="store_true", help="measure every latency again (no cache file)")


def run_data_generate(args: argparse.Namespace) -> None:
    from .data.domains import DOMAINS, write_domain

    out = write_domain(args.domain, args.out, train=args.train, valid=args.valid, test=args.test,
                       copies=args.copies, size=args.size, seed=args.seed, overwrite=args.overwrite)
    print(f"wrote {out}/ ({args.train * args.copies} training images from {args.train} drawn x {args.copies} "
          f"augmented copies, {args.valid} validation, {args.test} test; {len(DOMAINS[args.domain][1])} classes)")


def run_data_show(args: argparse.Namespace) -> None:
    from .data.coco import open_dataset
    from .data.show import dataset_grid, split_counts

    data = open_dataset(args.data, images=args.images)
    out = dataset_grid(data, args.out, split=args.split, count=args.count, augment=args.augment, seed=args.seed)
    for note in data.notes:
        print(note)
    shown = getattr(data, args.split)
    print(f"showing {min(args.count, len(shown))} of {len(shown)} {args.split} images; {split_counts(data)}; "
          f"{len(data.names)} classes: {', '.join(data.names)}")
    print(f"wrote {out}")


def _settings(args: argparse.Namespace, **defaults):
    from .train.settings import TrainSettings

    fields = {**defaults, **{k: getattr(args, k) for k in TrainSettings.model_fields if getattr(args, k, None) is not None}}
    try:
        return TrainSettings(**fields)
    except ValueError as err:
        raise InterpruneError("--" + _first_pydantic_error(err).replace("_", "-", 1)) from None


def run_train(args: argparse.Namespace) -> None:
    from .train.run import train

    summary = train(args.model, args.data, args.out, _settings(args), resume=args.resume, images=args.images,
                    progress=args.progress)
    _print_run(summary, args.out)


def run_pretrain(args: argparse.Namespace) -> None:
    from .pretrain import pretrain

    settings = _settings(args, lr_backbone=1e-4, from_scratch=True)  # a bare config: everything learns
    from .atomic import write_text

    summary = pretrain(args.config, args.data, args.out, settings, resume=args.resume, progress=args.progress)
    if summary is None:  # another process of a multi-process run: the first one writes and reports
        return
    recipe = {"command": "interprune " + " ".join(args.argv), "summary": summary.model_dump(mode="json")}
    write_text(Path(args.out) / "run" / "model" / "pretrain.json", json.dumps(recipe, indent=1))
    _print_run(summary, f"{args.out}/run")
    print(f"the pretrained model is {args.out}/run/model")


def _print_run(summary, out) -> None:
    if summary is None:  # another process of a multi-process run: the first one reports
        return
    resumed = f" in {summary.segments} segments" if summary.segments > 1 else ""
    print(f"steps {summary.steps}, {summary.seconds:.0f} s{resumed}; validation loss final {summary.final_val_loss:.3f}, "
          f"best {summary.best_val_loss:.3f}; mAP {summary.map:.3f}, mAP@50 {summary.map_50:.3f}")
    print(f"wrote {out}/ (summary.json, metrics.csv, model/, checkpoints/, tensorboard/)")


def _first_pydantic_error(err: Exception) -> str:
    errors = getattr(err, "errors", lambda: [])()
    if not errors:
        return str(err).splitlines()[0]
    first = errors[0]
    where = ".".join(str(p) for p in first.get("loc", ()))
    return f"{where}: {first.get('msg')} (got {first.get('input')!r})"


def run_predict(args: argparse.Namespace) -> None:
    from .predict import describe, predict

    found = predict(args.model, args.images, args.out, args.threshold, args.limit, top=args.top, kind=args.format,
                    max_side=args.max_side or None)
    for one in found:
        print(f"{one.image}: {one.detections} detections" + (f" (the best {one.detections} of {one.found}: --top "
                                                               f"{args.top})" if one.capped else ""))
    print(describe(found, args.threshold, args.top))
    print(f"wrote {args.out}/ ({len(found)} {args.format.upper()} pictures)")


def run_sweep(args: argparse.Namespace) -> int:
    from .sweep.config import load_sweep, preset_path
    from .sweep.report import write_report
    from .sweep.run import run_sweep

    if bool(args.file) == bool(args.preset):
        raise InterpruneError("give a sweep YAML file or --preset NAME (e.g. --preset paper), not both")
    source = str(Path(args.source).resolve()) if args.source and Path(args.source).exists() else args.source
    check_launcher_flags(args)
    config = load_sweep(args.file or preset_path(args.preset), {"data": args.data, "source": source})
    if args.launcher == "serial":
        run_sweep(config, args.out, only=args.only, progress=args.progress)
        _print_report(write_report(args.out))
        return 0
    return run_launched_sweep(config, args)


def run_launched_sweep(config, args: argparse.Namespace) -> int:
    """``sweep --launcher ray|slurm``: the runs spread over a cluster; the report of what finished; exit 1
    (after the report) when some run failed for good."""
    from .sweep.launch import launched_sweep, ray_launcher, slurm_launcher
    from .sweep.report import write_report

    if args.launcher == "ray":
        def make():
            return ray_launcher(args.address, args.cpus_per_run, args.gpus_per_run)
    else:
        def make():
            return slurm_launcher(Path(args.out).resolve(), local=args.local, partition=args.partition,
                                  cpus=int(args.cpus_per_run), gpus=int(args.gpus_per_run), minutes=args.time,
                                  parallelism=args.array_parallelism)
    outcomes = launched_sweep(config, args.out, make, retries=args.retries, only=args.only)
    bad = {key: o for key, o in outcomes.items() if o.status != "done"}
    if len(bad) < len(outcomes):
        _print_report(write_report(args.out))
    for key, outcome in bad.items():
        print(f"interprune: {key} {outcome.status}: {outcome.message}", file=sys.stderr)
    if bad:
        print(f"interprune: {len(bad)} of {len(outcomes)} runs did not finish; logs in {Path(args.out) / 'logs'}/; "
              f"run the same command again to retry them", file=sys.stderr)
    return 1 if bad else 0


def run_report(args: argparse.Namespace) -> None:
    from .sweep.report import write_report

    _print_report(write_report(args.results))


def _print_report(report: Path) -> None:
    print(f"report: {report} (also {report.with_suffix('.html')}, summary.csv, figures/)")


def run_bench(args: argparse.Namespace) -> None:
    from .deploy.ortbench import bench_runtime, check_runtime

    check_runtime(args.runtime)
    size = args.image_size
    if size is not None and (len(size) > 2 or min(size) < 16):
        raise InterpruneError(f"--image-size {' '.join(map(str, size))}: give one shortest edge or HEIGHT WIDTH, "
                              f"each at least 16 pixels")
    size = (size[0] if len(size) == 1 else tuple(size)) if size else None
    result = bench_runtime(args.model, args.runtime, device=args.device, batch=args.batch, warmup=args.warmup,
                           repeat=args.repeat, image_size=size, tokens=args.tokens, threads=args.threads,
                           dtype=args.dtype, memory=not args.no_memory, clock=args.clock)
    print(result.summary())
    if args.json:
        Path(args.json).write_text(json.dumps(result.to_dict(), indent=1))
        print(f"wrote {args.json}")


def run_demo(args: argparse.Namespace) -> None:
    from .demo import run_demo

    runtimes = [r.strip() for r in args.runtimes.split(",")] if args.runtimes else None
    run_demo(args.out, steps=args.steps, seeds=args.seeds, runtimes=runtimes, progress=args.progress)


def run_export(args: argparse.Namespace) -> None:
    from .deploy.export import export_onnx

    report = export_onnx(args.model, args.onnx, quantize=args.quantize, real=args.input,
                         image_size=args.image_size, tokens=args.tokens, overwrite=args.overwrite,
                         exporter=args.exporter)
    print(report.summary())
    print(f"wrote {args.onnx}/ (model.onnx{', model_quantized.onnx' if args.quantize else ''}, config.json, "
          "processor files, export.json)")


def add_methods_parser(sub: Any) -> None:
    p = sub.add_parser("methods", help="list the resampling methods")
    p.set_defaults(func=run_methods)


def _add_set_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="change a config field (JSON values), e.g. --set d_model=128; repeatable")


def add_shrink_parser(sub: Any) -> None:
    from .methods import LAYER_CHOICES, ROTATIONS

    p = sub.add_parser("shrink", help="resize a pretrained model and carry its weights over")
    p.add_argument("source", help="Hugging Face Hub id or local model folder")
    _add_set_flag(p)
    p.add_argument("--method", default="select", help="how each resized tensor is filled (default select; see 'interprune methods')")
    p.add_argument("--out", required=True, help="folder to write the model to")
    p.add_argument("--seed", type=int, default=0, help="seed for tensors that are freshly initialised")
    p.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], help="store the target in this dtype "
                   "(default: the source's)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    p.add_argument("--calibration", metavar="DATA", help="calibration examples for 'calibrated', --compensate, "
                   "--rotate and --layers importance: a COCO/Roboflow dataset or image folder (vision models), "
                   "a text file with one example per line (text models)")
    p.add_argument("--calibration-size", type=int, default=32, help="calibration examples used (default 32)")
    p.add_argument("--calibration-batch", type=int, default=None, metavar="N",
                   help="calibration examples run together (default 8, fewer for large images: at most 2 million "
                        "pixels); memory grows with it, the result does not change beyond float rounding")
    p.add_argument("--device", default="auto", help="where data-aware shrinking computes: auto (a GPU when there "
                   "is one), cpu, cuda or cuda:N")
    p.add_argument("--memory-budget", metavar="SIZE", help="activations the sequential engine keeps in memory "
                   "(e.g. 2GB); past it they go to a temporary folder on disk (default: no limit)")
    p.add_argument("--max-shard-size", default="5GB", help="largest weight file of OUT (e.g. 500MB); bigger "
                   "models are written as shards with an index (default 5GB)")
    p.add_argument("--compensate", action="store_true", help="refit every resized layer in closed form so its "
                   "outputs on the calibration data match the source's")
    p.add_argument("--rotate", nargs="?", const="heads", default=False, choices=list(ROTATIONS),
                   help="turn to principal directions (same function) before cutting: each attention head's width "
                        "(heads, the default), a pre-norm model's residual stream (residual: SliceGPT), or both")
    p.add_argument("--layers", default="first", choices=list(LAYER_CHOICES),
                   help="which source layers a shallower target keeps (default first)")
    p.add_argument("--recover", type=int, metavar="N", help="then distil the result from the source for N steps "
                   "on unlabelled inputs (see 'interprune recover'); OUT gets the recovered model")
    p.add_argument("--recover-data", metavar="DATA", help="unlabelled inputs for --recover (default: --calibration)")
    add_budget_arguments(p)
    p.set_defaults(func=run_shrink)


def add_plan_parser(sub: Any) -> None:
    p = sub.add_parser("plan", help="show which dimensions a shrink changes and every tensor axis of each")
    p.add_argument("source", help="Hugging Face Hub id or local model folder")
    _add_set_flag(p)
    add_budget_arguments(p)
    p.set_defaults(func=run_plan)


def add_data_parser(sub: Any) -> None:
    data = sub.add_parser("data", help="synthetic datasets and dataset pictures").add_subparsers(
        dest="data_command", required=True)
    for domain, train, valid, copies, about in (
        ("rocks", 127, 31, 3, "9 ore-rock classes, the paper's fine-tuning domain"),
        ("shapes", 600, 100, 1, "10 shape classes on clutter, the demo's pre-training domain"),
    ):
        p = data.add_parser(domain, help=f"write a synthetic Roboflow-layout COCO dataset: {about}")
        p.add_argument("--out", required=True)
        p.add_argument("--train", type=int, default=train, help="drawn training images")
        p.add_argument("--valid", type=int, default=valid)
        p.add_argument("--test", type=int, default=0)
        p.add_argument("--copies", type=int, default=copies, help="augmented copies stored per training image")
        p.add_argument("--size", type=int, default=256, help="image side in pixels")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--overwrite", action="store_true")
        p.set_defaults(func=run_data_generate, domain=domain)
    p = data.add_parser("show", help="draw a grid of images with their boxes")
    p.add_argument("data", help="Roboflow export folder or COCO annotations JSON")
    p.add_argument("--images", help="image folder for a plain COCO JSON")
    p.add_argument("--out", required=True, help="PNG to write")
    p.add_argument("--split", default="train", choices=["train", "valid", "test"])
    p.add_argument("--count", type=int, default=16)
    p.add_argument("--augment", action="store_true", help="show on-the-fly augmentations")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run_data_show)


def add_train_parser(sub: Any) -> None:
    p = sub.add_parser("train", help="fine-tune a detection model on a COCO dataset")
    p.add_argument("--model", required=True, help="model folder (e.g. from 'interprune shrink') or Hub id")
    p.add_argument("--data", required=True, help="Roboflow export folder or COCO annotations JSON")
    p.add_argument("--images", help="image folder for a plain COCO JSON")
    _add_training_flags(p)
    p.set_defaults(func=run_train)


def add_pretrain_parser(sub: Any) -> None:
    p = sub.add_parser("pretrain", help="train a detector from a bare config (how the demo's source was made)")
    p.add_argument("--config", default="demo", help="'demo' or a JSON model config")
    p.add_argument("--data", required=True, help="Roboflow export folder or COCO annotations JSON")
    _add_training_flags(p)
    p.set_defaults(func=run_pretrain)


def add_predict_parser(sub: Any) -> None:
    p = sub.add_parser("predict", help="draw a detector's boxes on images")
    p.add_argument("--model", required=True)
    p.add_argument("--images", required=True, help="folder of images")
    p.add_argument("--out", required=True, help="folder for the pictures")
    p.add_argument("--threshold", type=float, default=0.5, help="draw detections scoring at least this (default 0.5)")
    p.add_argument("--limit", type=int, help="at most this many images")
    p.add_argument("--top", type=int, default=100, help="draw at most the N best detections per image (default 100; "
                   "each image's line says when it cut some)")
    p.add_argument("--format", default="jpg", choices=["jpg", "png"], help="picture format (default jpg)")
    p.add_argument("--max-side", type=int, default=1280, help="longest side of the pictures in pixels (default "
                   "1280; 0 keeps the images' size)")
    p.set_defaults(func=run_predict)


def add_sweep_parser(sub: Any) -> None:
    p = sub.add_parser("sweep", help="run a set of experiments (YAML or preset), then write the report")
    p.add_argument("file", nargs="?", help="sweep YAML")
    p.add_argument("--preset", help="a shipped sweep: 'paper' (the paper's eight experiments) or 'demo' (the "
                   "offline demo's, without its source check)")
    p.add_argument("--data", help="dataset folder, overriding the YAML's 'data'")
    p.add_argument("--source", help="source model (Hub id, folder, or 'demo'), overriding the YAML's 'source', "
                   "e.g. a local copy of facebook/detr-resnet-50 for --preset paper")
    p.add_argument("--out", required=True, help="results folder")
    p.add_argument("--only", help="run only this experiment (spread a sweep over machines)")
    add_launcher_flags(p)
    _add_progress_flag(p)
    p.set_defaults(func=run_sweep)


def add_report_parser(sub: Any) -> None:
    p = sub.add_parser("report", help="join a results folder's runs into a report")
    p.add_argument("results")
    p.set_defaults(func=run_report)


def add_bench_parser(sub: Any) -> None:
    p = sub.add_parser("bench", help="measure a model's latency, throughput, peak memory, parameters and size")
    p.add_argument("model", help="model folder, Hub id, or 'demo' (the demo's source)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--batch", type=int, default=8, help="batch size for the throughput measurement (default 8)")
    p.add_argument("--warmup", type=int, default=3, help="untimed runs first (default 3)")
    p.add_argument("--repeat", type=int, default=20, help="timed runs at batch 1 (default 20; at least 3, fewer "
                   "after 10 s)")
    p.add_argument("--image-size", type=int, nargs="+", metavar="PIXELS", help="HEIGHT WIDTH of your photos, "
                   "which the model's processor then resizes as in use (e.g. 1371 2048), or one shortest edge for "
                   "a square image (default: square at the processor's shortest edge, or the config's image_size)")
    p.add_argument("--tokens", type=int, default=128, help="tokens per input for text models (default 128)")
    p.add_argument("--threads", type=int, help="CPU threads (default: torch's)")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    p.add_argument("--clock", default="wall", choices=["wall", "cpu"], help="wall-clock time (default) or the "
                   "process's CPU time, robust on a CPU shared with other work (use with --threads 1)")
    p.add_argument("--json", help="also write the numbers to this JSON file")
    p.add_argument("--runtime", default="torch", help="torch (eager PyTorch, default) or onnxruntime (an .onnx "
                   "file, an 'interprune export' folder, or a model folder exported first)")
    p.set_defaults(func=run_bench)


def add_demo_parser(sub: Any) -> None:
    p = sub.add_parser("demo", help="the whole story offline on a CPU: data, source, every method, report")
    p.add_argument("--out", default="demo-results", help="results folder (default: demo-results)")
    p.add_argument("--steps", type=int, default=None, help="fine-tuning steps per run (default: the demo preset's)")
    p.add_argument("--seeds", type=int, default=None, help="number of seeds (default: the demo preset's)")
    _add_progress_flag(p)
    p.add_argument("--runtimes", help="bench every experiment in these runtimes, e.g. torch,onnxruntime (default: "
                   "the preset's, torch)")
    p.set_defaults(func=run_demo)


def add_export_parser(sub: Any) -> None:
    p = sub.add_parser("export", help="write an ONNX model folder, checked against PyTorch (ONNX Runtime)")
    p.add_argument("model", help="model folder (e.g. from 'interprune shrink' or 'train'), or 'demo'")
    p.add_argument("--onnx", required=True, metavar="OUT", help="folder to write (model.onnx, config.json, the "
                   "processor or tokenizer files, export.json)")
    p.add_argument("--quantize", choices=["dynamic"], help="also write model_quantized.onnx: ONNX Runtime's "
                   "dynamic int8, checked on the task outputs")
    p.add_argument("--input", help="also check on this real input: an image, or a .txt file for text models")
    p.add_argument("--image-size", type=int, help="side of the dummy image (default: the processor's or config's)")
    p.add_argument("--tokens", type=int, default=16, help="tokens of the dummy text input (default 16)")
    p.add_argument("--exporter", default="auto", choices=["auto", "torchscript", "dynamo"],
                   help="torch.onnx's TorchScript or dynamo exporter (default auto: TorchScript, dynamo where "
                   "TorchScript cannot)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    p.set_defaults(func=run_export)


# one entry per command, in the order 'interprune --help' lists them
def add_recover_parser(sub: Any) -> None:
    """``interprune recover SMALL --teacher SOURCE --data UNLABELLED --steps N --out OUT``."""
    from .recover.settings import RecoverSettings

    p = sub.add_parser("recover", help="distil a shrunk model from its source on unlabelled images or text")
    p.add_argument("small", help="the shrunk model folder (its interprune.json says what it kept)")
    p.add_argument("--teacher", required=True, help="the model it was shrunk from (folder or Hub id)")
    p.add_argument("--data", required=True, help="unlabelled inputs: a text file (one example per line) for text "
                   "models, an image folder or COCO/Roboflow dataset for vision models")
    p.add_argument("--out", required=True, help="folder for the recovered model (its run goes into OUT/recover/)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/recover/checkpoints/last.ckpt")
    p.add_argument("--overwrite", action="store_true", help="replace the model (and any earlier run) in an "
                   "existing OUT, SMALL itself included; without it an OUT that holds anything is refused")
    for name, field in RecoverSettings.model_fields.items():
        kinds = [a for a in (get_args(field.annotation) or (field.annotation,)) if a is not type(None)]
        convert = kinds[0] if len(kinds) == 1 and kinds[0] in (int, float) else str
        choices = get_args(field.annotation) if get_origin(field.annotation) is Literal else None
        p.add_argument("--" + name.replace("_", "-"), dest=name, type=convert, default=None, choices=choices,
                       help=f"{field.description or ''} (default {field.default})".strip())
    p.set_defaults(func=run_recover)


def _recover_settings(args: argparse.Namespace, **fixed):
    from .recover.settings import RecoverSettings

    fields = {k: getattr(args, k) for k in RecoverSettings.model_fields if getattr(args, k, None) is not None}
    try:
        return RecoverSettings(**{**fields, **fixed})
    except ValueError as err:
        raise InterpruneError("--" + _first_pydantic_error(err).replace("_", "-", 1)) from None


def run_recover(args: argparse.Namespace) -> None:
    from .recover import recover

    summary = recover(args.small, args.teacher, args.data, args.out, _recover_settings(args), resume=args.resume,
                      overwrite=args.overwrite)
    _print_recovery(summary, args.out)


def _print_recovery(summary, out) -> None:
    if summary is None:  # another process of a multi-process run
        return
    print(f"recovered for {summary['steps']} steps in {summary['seconds']:.0f} s: held-out distillation loss "
          f"{summary['val_loss_start']:.4f} -> {summary['val_loss_end']:.4f} ({summary['states_matched']} block "
          f"outputs matched{'' if summary.get('states_comparable', True) else '; none can be: the residual stream was rotated'})")
    print(f"wrote {out}/ (config.json, model.safetensors, interprune.json; the run in {out}/recover/)")


COMMANDS = (add_methods_parser, add_shrink_parser, add_plan_parser, add_data_parser, add_train_parser,
            add_pretrain_parser, add_predict_parser, add_sweep_parser, add_report_parser, add_bench_parser,
            add_export_parser, add_demo_parser, add_recover_parser)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="interprune", description="Make a smaller (or differently sized) variant "
                                     "of a pretrained Hugging Face model by resampling its weights; fine-tune the "
                                     "variants and compare them.")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in COMMANDS:
        add(sub)
    return parser


def _add_training_flags(p: argparse.ArgumentParser) -> None:
    """One flag per TrainSettings field, so the CLI and YAML sweeps can never disagree."""
    from .train.settings import TrainSettings

    p.add_argument("--out", required=True, help="run folder")
    p.add_argument("--resume", action="store_true", help="continue from the run's checkpoints/last.ckpt")
    _add_progress_flag(p)
    for name, field in TrainSettings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        if field.annotation is bool:
            p.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=None, help=field.description)
        else:
            convert = {int: int, float: float}.get(field.annotation, str)
            choices = get_args(field.annotation) if get_origin(field.annotation) is Literal else None
            p.add_argument(flag, dest=name, type=convert, default=None, choices=choices,
                           help=f"{field.description or ''} (default {field.default})".strip())


def check_launcher_flags(args: argparse.Namespace) -> None:
    """Flags that belong to another launcher, or counts that cannot be, in one line before any work."""
    own = {"address": "ray", "partition": "slurm", "local": "slurm"}
    for flag, launcher in own.items():
        if getattr(args, flag) and args.launcher != launcher:
            raise InterpruneError(f"--{flag} is for --launcher {launcher}, not {args.launcher}")
    if args.retries < 0:
        raise InterpruneError(f"--retries {args.retries}: give 0 or more")
    if args.cpus_per_run <= 0 or args.gpus_per_run < 0:
        raise InterpruneError("--cpus-per-run must be above 0 and --gpus-per-run at least 0")
    if args.launcher == "slurm" and (args.cpus_per_run != int(args.cpus_per_run) or args.gpus_per_run != int(args.gpus_per_run)):
        raise InterpruneError("--launcher slurm takes whole CPUs and GPUs per run")


def add_launcher_flags(p: argparse.ArgumentParser) -> None:
    """Where a sweep's runs execute (see ``sweep.launch``)."""
    g = p.add_argument_group("launchers (README: Running on a cluster)")
    g.add_argument("--launcher", default="serial", choices=["serial", "ray", "slurm"],
                   help="serial (default: one run after another here), ray (a Ray task per run) or slurm "
                   "(a Slurm job per run, through submitit)")
    g.add_argument("--address", help="ray: the cluster (auto, host:port or ray://host:port); default: a local Ray "
                   "instance started and stopped here")
    g.add_argument("--cpus-per-run", type=float, default=1, help="CPUs each run asks for (default 1)")
    g.add_argument("--gpus-per-run", type=float, default=0, help="GPUs each run asks for (default 0)")
    g.add_argument("--retries", type=int, default=2, help="times a run whose worker or job died is started "
                   "again, resuming from its checkpoint (default 2)")
    g.add_argument("--partition", help="slurm: the partition")
    g.add_argument("--time", type=int, default=240, help="slurm: minutes per run (default 240)")
    g.add_argument("--array-parallelism", type=int, default=64, help="slurm: runs of one job array at once "
                   "(default 64)")
    g.add_argument("--local", action="store_true", help="slurm: submitit's local executor on this machine "
                   "instead of a Slurm cluster (same code path)")


def _add_progress_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                   help="show training progress (default): a bar on a terminal; in a file or pipe a line every "
                   "--log-every steps and one per validation, without carriage returns or escape codes")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    from .allocator import huge_pages

    huge_pages()  # before torch allocates anything: large tensors cost one page fault per 2 MB, not per 4 KB
    args = build_parser().parse_args(argv)
    args.argv = argv  # recorded where a command's output should say how it was made
    try:
        return args.func(args) or 0
    except InterpruneError as err:
        print(f"interprune: error: {err}", file=sys.stderr)
        return getattr(err, "exit_code", 2)  # 2: bad input; a failed export check says 1
    except KeyboardInterrupt:  # Ctrl-C: a line, not a traceback; outputs are written whole or not at all
        print("interprune: interrupted; no output was left half-written (a training or recovery run continues "
              "with --resume)", file=sys.stderr)
        return 130
