"""``interprune bench``: what a model costs to deploy, measured rather than claimed.

The paper says its pruned models have "faster inference time" and never measures it. For any model folder
this measures latency per input at batch 1 (median after warm-up), throughput at a larger batch, peak
memory, parameters and file size, on the machine's CPU or GPU. Detectors get an image at their own
processor's size, other vision models an image at the config's ``image_size``, text models a fixed number of
tokens. For detectors it also times the ``backbone`` alone (forward hooks), because shrinking the transformer
leaves the backbone as it was, and its share bounds what the shrinking can gain.

Peak memory is what the process needs beyond what it had before loading the model (weights, activations
and workspace together): on CUDA ``torch.cuda.max_memory_allocated``; on a CPU the rise of the resident set
(RSS) in a fresh child process, sampled every half millisecond and checked against the kernel's own peak
(``ru_maxrss``), since freed heap memory stays with a process and makes in-process RSS deltas meaningless.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from transformers import PretrainedConfig

from .errors import InterpruneError
from .hf.inputs import segment_ids
from .hf.models import count_parameters, is_detector, load_config, load_model
from .sources import resolve_source

__all__ = ["BenchResult", "bench", "dummy_inputs", "load_measured", "Stopwatch", "WEIGHT_SUFFIXES"]

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
DEFAULT_IMAGE_SIDE = 224  # for vision models whose config names no image size (ResNet, ...)
RUNTIMES = ("torch", "onnxruntime")  # eager PyTorch here; ONNX Runtime in deploy.ortbench
BACKBONE = "backbone"  # the Hugging Face name of a detector's (or any vision model's) feature extractor


@dataclass
class BenchResult:
    """One model's costs on one device; times in milliseconds, memory in MB (10^6 bytes)."""

    model: str
    device: str
    threads: int
    clock: str                  # "wall", or "cpu": the process's CPU time (robust on a shared machine)
    dtype: str
    inputs: str                 # what one input is, e.g. "image 3x800x800" or "128 tokens"
    parameters: int
    file_mb: float | None       # the weight files on disk (None for a Hub id)
    latency_ms: float           # median over the timed batch-1 runs
    latency_p90_ms: float
    runs: int                   # timed batch-1 runs
    batch: int
    throughput: float           # inputs per second at ``batch``
    backbone_ms: float | None   # median time inside the backbone at batch 1 (None: the model has none)
    peak_memory_mb: float | None = None        # at batch 1
    peak_memory_batch_mb: float | None = None  # at ``batch``
    memory_method: str | None = None
    runtime: str = "torch"      # or "onnxruntime" (interprune.deploy.ortbench)

    @property
    def backbone_share(self) -> float | None:
        return self.backbone_ms / self.latency_ms if self.backbone_ms is not None and self.latency_ms else None

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "backbone_share": self.backbone_share}

    def summary(self) -> str:
        size = f"{self.file_mb:.1f} MB on disk" if self.file_mb is not None else "not on disk"
        runtime = " in ONNX Runtime" if self.runtime == "onnxruntime" else ""
        lines = [f"{self.model}: {self.parameters:,} parameters, {size}; {self.dtype}{runtime} on {self.device}, "
                 f"input {self.inputs}",
                 f"latency at batch 1{' (CPU time)' if self.clock == 'cpu' else ''}: {self.latency_ms:.2f} ms median (p90 {self.latency_p90_ms:.2f} ms, "
                 f"{self.runs} runs)" + (f"; backbone {self.backbone_ms:.2f} ms ({self.backbone_share:.0%})"
                                         if self.backbone_ms is not None else ""),
                 f"throughput at batch {self.batch}: {self.throughput:.2f} inputs/s"]
        if self.peak_memory_mb is not None:
            lines.append(f"peak memory: {self.peak_memory_mb:.0f} MB at batch 1, {self.peak_memory_batch_mb:.0f} MB "
                         f"at batch {self.batch} ({self.memory_method})")
        return "\n".join(lines)


ImageSize = int | tuple[int, int] | list[int] | None  # a shortest edge, or the (height, width) of photos


def dummy_inputs(config: PretrainedConfig, source: str, batch: int, *, image_size: ImageSize = None,
                 tokens: int = 128, seed: int = 0) -> tuple[dict[str, torch.Tensor], str]:
    """Inputs of the kind the model takes and a description of one of them.

    A detector's image goes through its own processor (resize, normalise, pad), so the tensor has exactly
    the size the model sees in use. ``image_size`` (height, width) is the size of the user's photos, which the
    processor then resizes as it does in use (2048 x 1371 photos become 256 x 382 under a 256 px shortest
    edge: half as many pixels again as a square); one number is a square image at that shortest edge, and
    without it the image is square at the processor's shortest edge (the paper's data are square 416 px photos).
    """
    gen = torch.Generator().manual_seed(seed)
    photo = tuple(int(v) for v in image_size) if isinstance(image_size, (tuple, list)) else None
    side = image_size if isinstance(image_size, int) else None
    if is_detector(config):
        return _detector_inputs(config, source, batch, side, photo, gen)
    inputs: dict[str, torch.Tensor] = {}
    described: list[str] = []
    if isinstance(getattr(config, "num_mel_bins", None), int):  # speech (Whisper): log-mel frames, fixed length
        frames = 2 * getattr(config, "max_source_positions", 1500)
        inputs["input_features"] = torch.randn(batch, config.num_mel_bins, frames, generator=gen)
        described.append(f"{config.num_mel_bins}x{frames} mel frames")
    if isinstance(getattr(config, "conv_kernel", None), (list, tuple)) and hasattr(config, "num_feat_extract_layers"):
        samples = 320 * tokens  # speech from raw audio (wav2vec2): about one frame per 320 samples
        inputs["input_values"] = torch.randn(batch, samples, generator=gen)
        described.append(f"{samples} audio samples")
    vision = getattr(config, "vision_config", None) or config
    if not inputs and (isinstance(getattr(vision, "image_size", None), int)
                       or isinstance(getattr(vision, "num_channels", None), int)):
        square = side or getattr(vision, "image_size", None) or DEFAULT_IMAGE_SIDE  # convnets take any size
        height, width = photo or (square, square)
        channels = vision.num_channels
        inputs["pixel_values"] = torch.randn(batch, channels, height, width, generator=gen)
        described.append(f"image {channels}x{height}x{width}")
    text = getattr(config, "text_config", None) or config
    if isinstance(getattr(text, "vocab_size", None), int) and (not inputs or config.is_encoder_decoder
                                                               or text is not config):
        length = min(tokens, getattr(text, "max_position_embeddings", tokens) or tokens)
        if "input_features" in inputs:
            length = min(length, getattr(config, "max_target_positions", length))
        ids = torch.randint(0, text.vocab_size, (batch, length), generator=gen)
        if config.is_encoder_decoder:  # the decoder reads the same tokens: one forward of the whole model
            inputs["decoder_input_ids"] = ids
        if "input_features" not in inputs:
            inputs.update(input_ids=ids, attention_mask=torch.ones_like(ids))
            segments = segment_ids(config, source, ids)  # BERT-like: what its tokenizer gives it, so ONNX takes it
            if segments is not None:
                inputs["token_type_ids"] = segments
        described.append(f"{length} tokens")
    if not inputs:
        raise InterpruneError(f"cannot make inputs for a {config.model_type} model: it is neither a detector, nor "
                              "has its config an image_size, num_channels or a vocab_size")
    return inputs, " + ".join(described)


def _detector_inputs(config: PretrainedConfig, source: str, batch: int, side: int | None,
                     photo: tuple[int, ...] | None, gen: torch.Generator) -> tuple[dict[str, torch.Tensor], str]:
    """A detector's random image through its own processor, at ``photo`` size or square at ``side`` (default:
    the processor's shortest edge)."""
    from .hf.processors import load_processor

    processor = load_processor(source, config, side)
    size = processor.size
    edge = side or getattr(size, "shortest_edge", None) or getattr(size, "height", None) or (
        size.get("shortest_edge") or size.get("height"))
    height, width = photo or (int(edge), int(edge))
    image = torch.randint(0, 256, (3, height, width), dtype=torch.uint8, generator=gen)
    inputs = processor(images=[image] * batch, return_tensors="pt")
    keep = {k: inputs[k] for k in ("pixel_values", "pixel_mask") if k in inputs}
    return keep, "image " + "x".join(map(str, keep["pixel_values"].shape[1:]))


def file_mb(source: str) -> float | None:
    folder = Path(source)
    if not folder.is_dir():
        return None
    return sum(p.stat().st_size for p in folder.iterdir() if p.name.endswith(WEIGHT_SUFFIXES)) / 1e6


def _find_backbone(model: torch.nn.Module) -> torch.nn.Module | None:
    return next((m for name, m in model.named_modules() if name.split(".")[-1] == BACKBONE), None)


class Stopwatch:
    """Time spent inside one module, from forward hooks (synchronised on CUDA, where kernels run async)."""

    def __init__(self, module: torch.nn.Module, sync: Callable[[], None],
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.sync, self.clock, self.times, self._start = sync, clock, [], 0.0
        self.handles = [module.register_forward_pre_hook(self._pre), module.register_forward_hook(self._post)]

    def _pre(self, *_: Any) -> None:
        self.sync()
        self._start = self.clock()

    def _post(self, *_: Any) -> None:
        self.sync()
        self.times.append(self.clock() - self._start)

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def timed_calls(run: Callable[[], Any], sync: Callable[[], None], warmup: int, repeat: int, budget_s: float,
           clock: Callable[[], float] = time.perf_counter) -> list[float]:
    """Seconds per call after ``warmup`` calls: ``repeat`` calls, fewer (at least 3) when they exceed the budget."""
    for _ in range(warmup):
        run()
    times: list[float] = []
    spent = time.perf_counter()
    while len(times) < repeat and (len(times) < 3 or time.perf_counter() - spent < budget_s):
        sync()
        start = clock()
        run()
        sync()
        times.append(clock() - start)
    return times


def load_measured(source: str, config: PretrainedConfig, dtype: torch.dtype, device: str) -> torch.nn.Module:
    """The model in eval mode on ``device``, loaded quietly."""
    from transformers.utils import logging as transformers_logging

    verbosity, bars = transformers_logging.get_verbosity(), transformers_logging.is_progress_bar_enabled()
    transformers_logging.set_verbosity_error()  # a saved detector may carry extra keys; not the point here
    transformers_logging.disable_progress_bar()
    try:
        return load_model(source, config, dtype=dtype).to(device).eval()
    finally:
        transformers_logging.set_verbosity(verbosity)
        if bars:
            transformers_logging.enable_progress_bar()


def _to(inputs: dict[str, torch.Tensor], device: str, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Inputs on ``device``; floating-point ones (pixels) in the model's ``dtype``, ids and masks as they are."""
    return {k: v.to(device, dtype) if v.is_floating_point() else v.to(device) for k, v in inputs.items()}


@torch.inference_mode()
def bench(model: str | os.PathLike, *, device: str = "cpu", batch: int = 8, warmup: int = 3, repeat: int = 20,
          budget_s: float = 10.0, image_size: ImageSize = None, tokens: int = 128, threads: int | None = None,
          dtype: str = "float32", memory: bool = True, clock: str = "wall") -> BenchResult:
    """Measure ``model`` (a folder, Hub id or ``demo``); see the module docstring for what and how.

    ``clock="cpu"`` times by the process's CPU time instead of the wall clock: on a CPU shared with other work
    the wall clock measures the neighbours too, while CPU time at ``threads=1`` is what one dedicated core takes.
    """
    source = resolve_source(str(model))
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise InterpruneError(f"--device {device!r}: use cpu or cuda")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InterpruneError("--device cuda: no CUDA GPU is visible here; use --device cpu")
    if batch < 1 or repeat < 1 or warmup < 0:
        raise InterpruneError("--batch and --repeat must be at least 1, --warmup at least 0")
    if clock not in ("wall", "cpu") or (clock == "cpu" and device.startswith("cuda")):
        raise InterpruneError(f"--clock {clock!r}: use wall, or cpu when measuring on the CPU")
    if dtype not in ("float32", "float16", "bfloat16"):
        raise InterpruneError(f"--dtype {dtype!r}: use float32, float16 or bfloat16")
    config = load_config(source)
    one, described = dummy_inputs(config, source, 1, image_size=image_size, tokens=tokens)
    many, _ = dummy_inputs(config, source, batch, image_size=image_size, tokens=tokens)
    threads_before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return _measure(source, str(model), config, one, many, described, device=device, batch=batch, warmup=warmup,
                        repeat=repeat, budget_s=budget_s, image_size=image_size, tokens=tokens, dtype=dtype,
                        memory=memory, clock=clock)
    finally:
        torch.set_num_threads(threads_before)  # a sweep trains on after measuring


def _measure(source: str, name: str, config: PretrainedConfig, one: dict, many: dict, described: str, *, device: str,
             batch: int, warmup: int, repeat: int, budget_s: float, image_size: ImageSize, tokens: int, dtype: str,
             memory: bool, clock: str) -> BenchResult:
    timer = time.process_time if clock == "cpu" else time.perf_counter
    cuda = device.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    net = load_measured(source, config, getattr(torch, dtype), device)
    cast, cast_many = _to(one, device, getattr(torch, dtype)), _to(many, device, getattr(torch, dtype))
    part = _find_backbone(net)
    watch = Stopwatch(part, sync, timer) if part is not None else None
    times = timed_calls(lambda: net(**cast), sync, warmup, repeat, budget_s, timer)
    backbone = statistics.median(watch.times[-len(times):]) * 1e3 if watch else None
    if watch:
        watch.remove()
    peak = peak_many = method = None
    if cuda:
        peak = (torch.cuda.max_memory_allocated() - before) / 1e6
        torch.cuda.reset_peak_memory_stats()
    batch_times = timed_calls(lambda: net(**cast_many), sync, 1, max(3, repeat // 4), budget_s, timer)
    if cuda:
        peak_many = (torch.cuda.max_memory_allocated() - before) / 1e6
        method = "torch.cuda.max_memory_allocated, weights included"
    elif memory:
        peak, peak_many = _cpu_peak_memory(source, batch=batch, image_size=image_size, tokens=tokens,
                                           threads=torch.get_num_threads(), dtype=dtype)
        method = "rise of resident memory in a fresh process, weights included"
    count = torch.get_num_threads()
    where = f"cuda ({torch.cuda.get_device_name(device)})" if cuda else f"cpu ({count} thread{'s' * (count != 1)})"
    ordered = sorted(times)
    return BenchResult(
        model=name, device=where, threads=torch.get_num_threads(), clock=clock, dtype=dtype, inputs=described,
        parameters=count_parameters(net), file_mb=file_mb(source), latency_ms=statistics.median(times) * 1e3,
        latency_p90_ms=ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))] * 1e3, runs=len(times), batch=batch,
        throughput=batch / statistics.median(batch_times), backbone_ms=backbone, peak_memory_mb=peak,
        peak_memory_batch_mb=peak_many, memory_method=method)


def _rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _cpu_peak_memory(source: str, child: str = "_memory_child", module: str = "interprune.bench",
                     **options: Any) -> tuple[float | None, float | None]:
    """Peak RSS rise (MB) at batch 1 and at ``batch``, measured in a child process (``module.child``, which
    prints them as JSON); ``None`` off Linux."""
    if not Path("/proc/self/statm").is_file():
        return None, None
    code = f"import sys, json; from {module} import {child}; {child}(json.loads(sys.argv[1]))"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[1]),
                                                                       os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-c", code, json.dumps({"source": source, **options})], env=env,
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise InterpruneError(f"measuring memory failed: {done.stderr.strip().splitlines()[-1:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return result["batch1"], result["batch"]


def peak_rise(load: Callable[[], Any], run_one: Callable[[Any], Any], run_many: Callable[[Any], Any]) -> None:
    """In a memory child: the resident-memory rise over loading plus one run at batch 1, then plus one at the
    larger batch, sampled every half millisecond and checked against the kernel's peak; printed as JSON."""
    base, kernel_before = _rss_bytes(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    peak = [base]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], _rss_bytes())
            time.sleep(0.0005)

    def highest() -> int:
        kernel = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        return max(peak[0], _rss_bytes(), kernel if kernel > kernel_before else 0)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    net = load()
    run_one(net)
    at_one = highest()
    run_many(net)
    at_many = highest()
    stop.set()
    print(json.dumps({"batch1": (at_one - base) / 1e6, "batch": (at_many - base) / 1e6}))


def _memory_child(options: dict[str, Any]) -> None:
    """Runs in the child: load, one forward at batch 1, one at ``batch``; prints the two peaks as JSON."""
    torch.set_num_threads(options["threads"])
    source = options["source"]
    config = load_config(source)
    one, _ = dummy_inputs(config, source, 1, image_size=options["image_size"], tokens=options["tokens"])
    many, _ = dummy_inputs(config, source, options["batch"], image_size=options["image_size"], tokens=options["tokens"])
    dtype = getattr(torch, options["dtype"])
    one, many = _to(one, "cpu", dtype), _to(many, "cpu", dtype)
    with torch.inference_mode():
        peak_rise(lambda: load_measured(source, config, dtype, "cpu"), lambda net: net(**one),
                  lambda net: net(**many))
