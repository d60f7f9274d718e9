"""What a candidate costs: parameters and FLOPs exactly, on the meta device; latency measured, with a cache.

Parameters and FLOPs need no memory and no weights: the candidate is built on the meta device and run once
on meta inputs of the real shape under ``torch.utils.flop_counter`` (every matmul, convolution and attention
kernel counted, 2 FLOPs per multiply-add). A few models ask a tensor for a Python value on the way (DETR
checks whether its pixel mask is all ones); on meta there is no value, so such questions are answered with
"true", which is what an unpadded batch of one image says. Latency is measured, never estimated: a short run
of the candidate with random weights (speed does not depend on the values) on the chosen device, kept in a
cache keyed by the config, input, device, threads, clock and torch version, so a search never measures the
same candidate twice.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode
from transformers import PretrainedConfig

from ..errors import InterpruneError
from ..bench import timed_calls
from ..hf.models import build_model, count_parameters

__all__ = ["static_costs", "LatencyCache", "measure_latency", "interleaved_latency", "check_device", "default_cache"]


class _MetaScalars(TorchDispatchMode):
    """Answer ``tensor.item()`` on meta tensors with 1/True (see the module docstring)."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default and args and getattr(args[0], "is_meta", False):
            return True if args[0].dtype == torch.bool else 1
        return func(*args, **(kwargs or {}))


@torch.no_grad()
def static_costs(config: PretrainedConfig, inputs: dict[str, torch.Tensor]) -> tuple[int, int]:
    """Parameters and FLOPs of one forward pass of ``config``'s model on ``inputs`` (shapes only)."""
    model = build_model(config, meta=True)
    meta = {k: v.to("meta") for k, v in inputs.items()}
    counter = FlopCounterMode(display=False)
    with counter, _MetaScalars():
        model(**meta)
    return count_parameters(model), int(counter.get_total_flops())


def check_device(device: str) -> None:
    """A latency budget on a device that is not there is refused before any work."""
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise InterpruneError(f"unknown device {device!r} for the latency budget; use cpu or cuda") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InterpruneError(f"--budget latency=... is measured on {device}, but this machine has no CUDA device; "
                              f"use --latency-device cpu or a params/flops budget")
    if dev.type not in ("cpu", "cuda"):
        raise InterpruneError(f"latency is measured on cpu or cuda, not {device!r}")


def default_cache() -> Path:
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return root / "interprune" / "latency.json"


class LatencyCache:
    """Measured latencies by key, in one JSON file (written atomically); ``None`` keeps them in memory."""

    def __init__(self, path: str | os.PathLike | None):
        self.path = Path(path) if path is not None else None
        self.values: dict[str, float] = {}
        if self.path is not None and self.path.is_file():
            try:
                self.values = {k: float(v) for k, v in json.loads(self.path.read_text()).items()}
            except (ValueError, AttributeError, TypeError):
                self.values = {}  # a damaged cache is only lost time: measure again
        self.hits = 0

    def get(self, key: str) -> float | None:
        value = self.values.get(key)
        self.hits += value is not None
        return value

    def put(self, key: str, value: float) -> None:
        self.values[key] = value
        if self.path is not None:
            from ..atomic import write_text

            write_text(self.path, json.dumps(self.values, indent=0, sort_keys=True))


def latency_key(config: PretrainedConfig, inputs: dict[str, torch.Tensor], device: str, threads: int,
                clock: str) -> str:
    machine = torch.cuda.get_device_name(device) if device.startswith("cuda") else platform.processor() or platform.machine()
    what = {"config": config.to_diff_dict(), "inputs": {k: list(v.shape) for k, v in inputs.items()}, "device": device,
            "machine": machine, "threads": threads, "clock": clock, "torch": torch.__version__}
    what["config"].pop("transformers_version", None)
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:24]


@torch.inference_mode()
def measure_latency(config: PretrainedConfig, inputs: dict[str, torch.Tensor], *, device: str = "cpu",
                    threads: int | None = None, clock: str = "wall", warmup: int = 2, repeat: int = 15,
                    seconds: float = 0.3, cache: LatencyCache | None = None) -> float:
    """Median milliseconds of one forward pass at batch 1 (random weights), from the cache when known: up to
    ``repeat`` runs within about ``seconds`` (at least 3), so small models get enough runs to be stable."""
    threads = threads or torch.get_num_threads()
    key = latency_key(config, inputs, device, threads, clock)
    known = cache.get(key) if cache is not None else None
    if known is not None:
        return known
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        model = build_model(config).to(device).eval()
        feed = {k: v.to(device) for k, v in inputs.items()}
        sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
        tick = time.process_time if clock == "cpu" else time.perf_counter
        times = timed_calls(lambda: model(**feed), sync, warmup, repeat, seconds, tick)  # bench's own loop
    finally:
        torch.set_num_threads(previous)
    value = statistics.median(times) * 1e3
    if cache is not None:
        cache.put(key, value)
    return value


@torch.inference_mode()
def interleaved_latency(configs: list[PretrainedConfig], inputs: dict[str, torch.Tensor], *, device: str = "cpu",
                        threads: int | None = None, clock: str = "wall", rounds: int = 3, most: int = 15,
                        seconds: float = 0.5) -> list[float]:
    """Median milliseconds of each model, measured in alternating rounds (after one untimed round), so that a
    slow moment of a shared machine hits all of them alike: the check of a search's choice against its source.
    At least ``rounds`` rounds, more (up to ``most``) while they take less than ``seconds`` in all."""
    threads = threads or torch.get_num_threads()
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        models = [build_model(c).to(device).eval() for c in configs]
        feed = {k: v.to(device) for k, v in inputs.items()}
        sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
        tick = time.process_time if clock == "cpu" else time.perf_counter
        times: list[list[float]] = [[] for _ in models]
        spent, round_ = time.perf_counter(), 0
        while round_ <= rounds or (round_ <= most and time.perf_counter() - spent < seconds):
            round_ += 1
            for model, kept in zip(models, times):
                sync()
                start = tick()
                model(**feed)
                sync()
                if round_ > 1:
                    kept.append(tick() - start)
    finally:
        torch.set_num_threads(previous)
    return [statistics.median(t) * 1e3 for t in times]
