"""ONNX Runtime sessions: the optional imports in one place, execution providers by device, inputs as numpy."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch

from ..errors import InterpruneError, first_line

__all__ = ["require_onnx", "session", "providers_for", "to_numpy", "feed"]

INSTALL = "pip install 'interprune[onnx]'"


def require_onnx() -> tuple[Any, Any]:
    """``(onnx, onnxruntime)``, or one line saying how to install them (checked before any work)."""
    try:
        import onnx
        import onnxruntime
    except ImportError as err:
        raise InterpruneError(f"ONNX export and ONNX Runtime need the onnx extra ({err.name} is missing): "
                              f"{INSTALL}") from None
    return onnx, onnxruntime


def providers_for(device: str) -> list[str]:
    """ONNX Runtime's execution providers for ``cpu`` or ``cuda``; one line when CUDA's is not installed."""
    _, ort = require_onnx()
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if device == "cuda" or device.startswith("cuda:"):
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise InterpruneError("--device cuda: this onnxruntime has no CUDAExecutionProvider; install "
                                  "onnxruntime-gpu, or use --device cpu")
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    raise InterpruneError(f"--device {device!r}: use cpu or cuda")


def session(path: str | os.PathLike, device: str = "cpu", threads: int | None = None) -> Any:
    """An inference session on ``path`` with all graph optimisations (ONNX Runtime's default for serving)."""
    _, ort = require_onnx()
    options = ort.SessionOptions()
    options.log_severity_level = 4  # only fatal: a failed run is reported by the check, in one line
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    try:
        return ort.InferenceSession(str(path), options, providers=providers_for(device))
    except InterpruneError:
        raise
    except Exception as err:  # a damaged or foreign file
        raise InterpruneError(f"ONNX Runtime cannot load {path}: {first_line(err)}") from None


def to_numpy(inputs: dict[str, Any]) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}


def feed(runner: Any, inputs: dict[str, Any]) -> dict[str, np.ndarray]:
    """The inputs the graph takes (an exporter drops inputs the model never reads, e.g. YOLOS's pixel mask)."""
    wanted = {i.name for i in runner.get_inputs()}
    return {k: v for k, v in to_numpy(inputs).items() if k in wanted}
