"""``interprune bench --runtime onnxruntime``: the PyTorch bench's table, measured in ONNX Runtime.

Accepts an ``.onnx`` file, a folder written by ``interprune export`` (``model.onnx`` beside ``config.json``), or
a PyTorch model folder, which is first exported (and checked) into a temporary folder. Inputs are the same
dummy inputs as the PyTorch bench (a detector's image through its own processor) when the config is known, else
built from the graph's declared inputs. Latency, throughput, p90 and the clock are measured exactly as there;
the backbone share is not (ONNX Runtime runs one fused graph), peak memory is the rise of resident memory in a
fresh process on the CPU, and "parameters" counts the graph's initialiser elements.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..bench import DEFAULT_IMAGE_SIDE, RUNTIMES, BenchResult, ImageSize, _cpu_peak_memory, timed_calls, bench, dummy_inputs, peak_rise
from ..errors import InterpruneError
from ..hf.models import load_config
from ..sources import resolve_source
from .export import ONNX_FILE, export_onnx
from .runtime import feed, require_onnx, session, to_numpy

__all__ = ["RUNTIMES", "bench_runtime", "bench_onnx", "onnx_path"]

def bench_runtime(model: str | os.PathLike, runtime: str = "torch", **options: Any) -> BenchResult:
    """``bench`` (eager PyTorch) or ``bench_onnx`` by name; an unknown runtime is one line."""
    check_runtime(runtime)
    return bench(model, **options) if runtime == "torch" else bench_onnx(model, **options)


def check_runtime(runtime: str) -> None:
    if runtime not in RUNTIMES:
        raise InterpruneError(f"--runtime {runtime!r}: use one of {', '.join(RUNTIMES)}")
    if runtime == "onnxruntime":
        require_onnx()


def onnx_path(model: str | os.PathLike) -> Path | None:
    """The ONNX file ``model`` names (a file, or an export folder's ``model.onnx``), else None."""
    path = Path(model)
    if path.suffix == ".onnx":
        if not path.is_file():
            raise InterpruneError(f"{path}: no such ONNX file")
        return path
    return path / ONNX_FILE if (path / ONNX_FILE).is_file() else None


def bench_onnx(model: str | os.PathLike, *, device: str = "cpu", batch: int = 8, warmup: int = 3, repeat: int = 20,
               budget_s: float = 10.0, image_size: ImageSize = None, tokens: int = 128, threads: int | None = None,
               dtype: str = "float32", memory: bool = True, clock: str = "wall") -> BenchResult:
    """Measure ``model`` in ONNX Runtime (see the module docstring)."""
    if batch < 1 or repeat < 1 or warmup < 0:
        raise InterpruneError("--batch and --repeat must be at least 1, --warmup at least 0")
    if clock not in ("wall", "cpu") or (clock == "cpu" and device != "cpu"):
        raise InterpruneError(f"--clock {clock!r}: use wall, or cpu when measuring on the CPU")
    if dtype != "float32":
        raise InterpruneError(f"--dtype {dtype}: the ONNX export is float32 (use --quantize dynamic at export "
                              "for int8)")
    require_onnx()
    path = onnx_path(resolve_source(str(model)))
    if path is not None:
        return _bench_file(path, str(model), device=device, batch=batch, warmup=warmup, repeat=repeat,
                           budget_s=budget_s, image_size=image_size, tokens=tokens, threads=threads, memory=memory,
                           clock=clock)
    with tempfile.TemporaryDirectory(prefix="interprune-onnx-") as tmp:
        export_onnx(model, Path(tmp) / "onnx", image_size=image_size, tokens=min(tokens, 16))
        return _bench_file(Path(tmp) / "onnx" / ONNX_FILE, str(model), device=device, batch=batch, warmup=warmup,
                           repeat=repeat, budget_s=budget_s, image_size=image_size, tokens=tokens, threads=threads,
                           memory=memory, clock=clock, exported=True)


def inputs_for(path: Path, batch: int, image_size: ImageSize, tokens: int) -> tuple[dict[str, np.ndarray], str]:
    """The PyTorch bench's dummy inputs when a config lies beside the file; else from the graph's inputs (free
    axes: the first is the batch, a second of two the tokens, the others the image side)."""
    if (path.parent / "config.json").is_file():
        config = load_config(path.parent)
        found, described = dummy_inputs(config, str(path.parent), batch, image_size=image_size, tokens=tokens)
        return to_numpy(found), described
    onnx, _ = require_onnx()
    gen = np.random.default_rng(0)
    found = {}
    graph = onnx.load(str(path), load_external_data=False).graph
    stored = {t.name for t in graph.initializer}
    height, width = (tuple(image_size) if isinstance(image_size, (tuple, list))
                     else (image_size or DEFAULT_IMAGE_SIDE,) * 2)
    for spec in (i for i in graph.input if i.name not in stored):
        dims = spec.type.tensor_type.shape.dim
        free = [tokens] * len(dims) if len(dims) == 2 else [height] * (len(dims) - 1) + [width]
        shape = [batch if i == 0 else (d.dim_value or free[i]) for i, d in enumerate(dims)]
        kind = onnx.helper.tensor_dtype_to_np_dtype(spec.type.tensor_type.elem_type)
        found[spec.name] = (gen.standard_normal(shape).astype(kind) if np.issubdtype(kind, np.floating)
                            else np.ones(shape, kind))
    return found, ", ".join(f"{k} {'x'.join(map(str, v.shape[1:]))}" for k, v in found.items())


def _bench_file(path: Path, name: str, *, device: str, batch: int, warmup: int, repeat: int, budget_s: float,
                image_size: int | None, tokens: int, threads: int | None, memory: bool, clock: str,
                exported: bool = False) -> BenchResult:
    runner = session(path, device, threads)
    one, described = inputs_for(path, 1, image_size, tokens)
    many, _ = inputs_for(path, batch, image_size, tokens)
    one, many = feed(runner, one), feed(runner, many)
    timer = time.process_time if clock == "cpu" else time.perf_counter
    times = timed_calls(lambda: runner.run(None, one), lambda: None, warmup, repeat, budget_s, timer)
    batch_times = timed_calls(lambda: runner.run(None, many), lambda: None, 1, max(3, repeat // 4), budget_s, timer)
    peak = peak_many = method = None
    if memory and device == "cpu":
        peak, peak_many = _cpu_peak_memory(str(path), "_memory_child", "interprune.deploy.ortbench", batch=batch,
                                           image_size=image_size, tokens=tokens, threads=threads or 0)
        method = "rise of resident memory in a fresh process, weights included"
    count = threads or runner.get_session_options().intra_op_num_threads or os.cpu_count() or 1
    ordered = sorted(times)
    where = f"cpu ({count} thread{'s' * (count != 1)})" if device == "cpu" else f"{device} (CUDAExecutionProvider)"
    return BenchResult(
        model=name, device=where, threads=count, clock=clock, dtype="float32", inputs=described,
        parameters=initializer_elements(path), file_mb=None if exported else onnx_mb(path),
        latency_ms=statistics.median(times) * 1e3, latency_p90_ms=ordered[min(len(ordered) - 1,
                                                                              int(0.9 * len(ordered)))] * 1e3,
        runs=len(times), batch=batch, throughput=batch / statistics.median(batch_times), backbone_ms=None,
        peak_memory_mb=peak, peak_memory_batch_mb=peak_many, memory_method=method, runtime="onnxruntime")


def initializer_elements(path: Path) -> int:
    """Elements of the graph's stored tensors (weights; int8 ones after quantization count the same)."""
    onnx, _ = require_onnx()
    graph = onnx.load(str(path), load_external_data=False).graph
    return sum(int(np.prod(t.dims)) for t in graph.initializer)


def onnx_mb(path: Path) -> float:
    """The ONNX file with its external weight data, if any."""
    extra = [p for p in path.parent.glob(path.name + ".data")]
    return (path.stat().st_size + sum(p.stat().st_size for p in extra)) / 1e6


def _memory_child(options: dict[str, Any]) -> None:
    """Runs in the child: a session, one run at batch 1, one at ``batch``; prints the two peaks as JSON."""
    path = Path(options["source"])
    threads = options["threads"] or None
    one, _ = inputs_for(path, 1, options["image_size"], options["tokens"])
    many, _ = inputs_for(path, options["batch"], options["image_size"], options["tokens"])
    peak_rise(lambda: session(path, "cpu", threads), lambda s: s.run(None, feed(s, one)),
              lambda s: s.run(None, feed(s, many)))
