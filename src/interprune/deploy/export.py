"""``interprune export MODEL --onnx OUT``: an ONNX model folder, checked against PyTorch before it is kept.

Exporter: ``torch.onnx.export``. optimum's ONNX export now lives in ``optimum-onnx``, whose only release needs
transformers < 4.58 and optimum 2.1, while interprune runs on transformers 5: it cannot be installed beside us.
Of torch's two exporters the default here is the TorchScript one (``dynamo=False``, opset 17): on the 23 families
the tests build it exports every one, including Swin and T5, in about a second each, while the dynamo exporter
(``--exporter dynamo``: torch.export, opset 18) fails on those two (an ``aten.view`` of a transposed tensor with
a free batch) and takes 3 to 45 s per tiny model. The TorchScript exporter traces one run, so a size the model
reads as a Python number could be frozen into the graph: the check therefore also runs the ONNX model on
inputs of another batch and, where free, another image size or sequence length.

A text model's graph takes the inputs its tokenizer gives that its forward accepts (``token_type_ids`` for
BERT-like encoders, see ``bench.dummy_inputs``), so the tokenizer's output feeds ONNX Runtime as it is.

The folder holds ``model.onnx``, the model's ``config.json``, its processor or tokenizer files and
``export.json`` (what was checked, with the tolerance and the largest differences). It is written to a hidden
sibling and renamed into place only after the check passed: a failed export or check leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import json
import os
import re
import shutil
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..atomic import atomic_folder
from ..bench import DEFAULT_IMAGE_SIDE, ImageSize, dummy_inputs
from ..errors import InterpruneError, first_line
from ..hf.models import check_writable, is_detector, load_config, load_model
from ..hf.processors import copy_processor_files, load_processor
from ..sources import resolve_source
from .check import CheckResult, compare, compare_detections, compare_direction
from .runtime import feed, require_onnx, session

__all__ = ["ExportReport", "export_onnx", "EXPORTERS", "ONNX_FILE", "QUANTIZED_FILE"]

EXPORTERS = ("auto", "torchscript", "dynamo")  # auto: torchscript, and dynamo where torchscript cannot
OPSETS = {"torchscript": 17, "dynamo": 18}
ONNX_FILE, QUANTIZED_FILE = "model.onnx", "model_quantized.onnx"
EXPORT_BATCH = 2  # torch.export specialises a dimension of size 1: the dummy batch must be 2 to stay dynamic
QUANTIZE = (None, "dynamic")


@dataclass
class ExportReport:
    """What ``export_onnx`` wrote and how the check went; saved as ``export.json`` beside the model."""

    source: str
    out: str
    exporter: str
    opset: int
    seconds: float                          # export alone (tracing, conversion, optimisation, saving)
    inputs: dict[str, dict[int, str]]       # input name -> its dynamic axes
    outputs: list[str]
    checks: list[CheckResult] = field(default_factory=list)
    quantized: CheckResult | None = None

    def summary(self) -> str:
        lines = [f"exported {self.source} to {self.out}/{ONNX_FILE} in {self.seconds:.1f} s ({self.exporter}, "
                 f"opset {self.opset}); dynamic axes: " + ", ".join(
                     f"{name}[{', '.join(axes.values())}]" for name, axes in self.inputs.items())]
        lines += [check.summary() for check in self.checks]
        if self.quantized is not None:
            lines.append(self.quantized.summary())
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Flat(nn.Module):
    """The model as the exporter wants it: positional tensors in, a tuple of named tensors out."""

    def __init__(self, model: nn.Module, inputs: list[str], outputs: list[str]) -> None:
        super().__init__()
        self.model, self.inputs, self.outputs = model, inputs, outputs
        accepts = inspect.signature(model.forward).parameters
        self.extra = {"return_dict": True, **({"use_cache": False} if "use_cache" in accepts else {})}

    def forward(self, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        found = self.model(**dict(zip(self.inputs, args)), **self.extra)
        return tuple(found[name] for name in self.outputs)


def output_names(model: nn.Module, inputs: dict[str, torch.Tensor]) -> list[str]:
    """The tensor outputs of one eager forward: the loss, caches and nested sub-model outputs are not kept."""
    flat = _Flat(model, list(inputs), [])
    try:
        with torch.inference_mode():
            found = model(**inputs, **flat.extra)
    except Exception as err:
        raise InterpruneError(f"the model does not run on its dummy inputs ({_shape_words(inputs)}): "
                              f"{first_line(err)}; give an --image-size or --tokens it accepts") from None
    return [k for k, v in found.items() if isinstance(v, torch.Tensor) and k != "loss"]


def dynamic_axes(model: nn.Module, config: Any, source: str, inputs: dict[str, torch.Tensor], image_size: int,
                 tokens: int) -> tuple[dict[str, dict[int, str]], dict[str, torch.Tensor]]:
    """Which axes of each input stay free, and the other-shaped inputs that prove it.

    The batch is always free. Image height and width, or sequence length, are free where the model allows them
    (its eager forward accepts another size: detectors and convolutional nets do, models with position
    embeddings learnt for one image size do not); the check then runs the ONNX model on those other shapes.
    """
    axes = {name: {0: "batch"} for name in inputs}
    other, _ = dummy_inputs(config, source, 1, image_size=_other_side(image_size), tokens=max(1, tokens - 3))
    if {k: v.shape[1:] for k, v in other.items()} != {k: v.shape[1:] for k, v in inputs.items()}:
        try:
            with torch.inference_mode():
                model(**other, **_Flat(model, [], []).extra)
        except Exception:  # this size is not allowed: keep the export's own sizes, free the batch alone
            other = {k: v[:1] for k, v in inputs.items()}
    for name, value in other.items():
        free = [i for i in range(1, value.dim()) if value.shape[i] != inputs[name].shape[i]]
        axes[name].update({i: f"{name}_{i}" for i in free})
    return _shared_names(axes, inputs), other


def _other_side(side: int) -> int:
    """Another image side to prove the free axes on: smaller for big images (cheaper), larger for tiny ones."""
    return side + 32 if side < 128 else (side * 3 // 4) // 32 * 32


def _shared_names(axes: dict[str, dict[int, str]], inputs: dict[str, torch.Tensor]) -> dict[str, dict[int, str]]:
    """One name per size that several inputs share (ids and mask: ``sequence``; pixels and mask: height, width)."""
    names = {"input_ids": {1: "sequence"}, "attention_mask": {1: "sequence"}, "token_type_ids": {1: "sequence"},
             "decoder_input_ids": {1: "decoder_sequence"}, "pixel_values": {2: "height", 3: "width"},
             "pixel_mask": {1: "height", 2: "width"}}
    return {name: {i: (names.get(name, {}).get(i, label) if i else label) for i, label in free.items()}
            for name, free in axes.items()}


def _export(model: nn.Module, inputs: dict[str, torch.Tensor], outputs: list[str], axes: dict[str, dict[int, str]],
            path: Path, exporter: str) -> None:
    """Run the exporter quietly; what it cannot handle becomes one line naming the operator or module."""
    flat = _Flat(model, list(inputs), outputs).eval()
    chatter = io.StringIO()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(chatter), contextlib.redirect_stderr(chatter):
            warnings.simplefilter("ignore")  # tracer warnings about Python values are what the check is for
            if exporter == "torchscript":
                torch.onnx.export(flat, tuple(inputs.values()), str(path), input_names=list(inputs),
                                  output_names=outputs, opset_version=OPSETS[exporter], dynamo=False,
                                  dynamic_axes={**axes, **{name: {0: "batch"} for name in outputs}})
            else:
                shapes = tuple({i: torch.export.Dim.AUTO for i in free} for free in axes.values())
                program = torch.onnx.export(flat, tuple(inputs.values()), input_names=list(inputs),
                                            output_names=outputs, dynamic_shapes=(shapes,), dynamo=True,
                                            opset_version=OPSETS[exporter], verbose=False, report=False, optimize=True)
                program.save(str(path), external_data=_needs_external_data(model))
    except Exception as err:
        raise InterpruneError(f"torch.onnx ({exporter}) cannot export this {type(model).__name__}: "
                              f"{_exporter_reason(err)}") from None


def _needs_external_data(model: nn.Module) -> bool:
    """ONNX's protobuf holds at most 2 GB: bigger models keep their weights in ``model.onnx.data`` beside it."""
    return sum(p.numel() * p.element_size() for p in model.parameters()) > 1.8e9


def _exporter_reason(err: BaseException) -> str:
    """One line from the exporter's long report: the operator it failed on, why, and the model's source line."""
    text = [line.strip() for line in str(err).splitlines() if line.strip()]
    summary = next((text[i + 1] for i, line in enumerate(text[:-1]) if line.startswith("## Exception summary")), None)
    operator = next((m.group(1) for line in text if (m := re.search(r"target=torch\.ops\.([\w.]+)", line))), None)
    where = [m for line in text if (m := re.search(r"(\w+)/(modeling_\w+\.py)\", line (\d+)", line))]
    parts = [f"operator {operator}" if operator else "", re.sub(r"^<class '[\w.]+'>: ", "", summary or "")]
    if where:
        parts.append(f"in {where[-1].group(2)}:{where[-1].group(3)}")
    line = "; ".join(p for p in parts if p)
    return line[:300] if line else first_line(err)

def check_request(source: str, out: str | os.PathLike, quantize: str | None, overwrite: bool,
                  real: str | os.PathLike | None, exporter: str = "auto") -> str:
    """Every bad-input case as one line, before any work: the source folder and weights, OUT, the options."""
    require_onnx()
    if exporter not in EXPORTERS:
        raise InterpruneError(f"--exporter {exporter!r}: use one of {', '.join(EXPORTERS)}")
    if quantize not in QUANTIZE:
        raise InterpruneError(f"--quantize {quantize!r}: the one kind is 'dynamic' (ONNX Runtime's dynamic int8)")
    source = resolve_source(str(source))
    folder = Path(source)
    if not folder.is_dir():
        raise InterpruneError(f"{source} is not a model folder; export a folder written by save_pretrained or "
                              f"'interprune shrink'")
    load_config(source)
    if not any((folder / name).is_file() for name in ("model.safetensors", "model.safetensors.index.json",
                                                        "pytorch_model.bin", "pytorch_model.bin.index.json")):
        raise InterpruneError(f"{source} has a config.json but no weights (model.safetensors); nothing to export")
    out = Path(out)
    check_writable(out)
    if out.exists() and not overwrite:
        raise InterpruneError(f"{out} already exists; choose another --onnx or pass --overwrite")
    if real is not None and not Path(real).is_file():
        raise InterpruneError(f"--input {real}: no such file")
    return source


def export_onnx(source: str | os.PathLike, out: str | os.PathLike, *, quantize: str | None = None,
                real: str | os.PathLike | None = None, image_size: ImageSize = None, tokens: int = 16,
                overwrite: bool = False, exporter: str = "auto") -> ExportReport:
    """Export ``source`` to the folder ``out`` and check it (see the module docstring); return the report.

    ``image_size`` is the side of the dummy image (default: the processor's, or the config's); ``tokens`` the
    dummy sequence length. ``real`` is one real input (an image, or a text file) checked as well.
    """
    source = check_request(str(source), out, quantize, overwrite, real, exporter)
    config = load_config(source)
    model = load_model(source, config, dtype=torch.float32)
    inputs, described = dummy_inputs(config, source, EXPORT_BATCH, image_size=image_size, tokens=tokens)
    side = image_size if isinstance(image_size, int) else (
        inputs["pixel_values"].shape[-1] if "pixel_values" in inputs else DEFAULT_IMAGE_SIDE)
    outputs = output_names(model, inputs)
    axes, other = dynamic_axes(model, config, source, inputs, side, tokens)
    cases = [(f"dummy inputs (batch {EXPORT_BATCH}, {described})", inputs),
             (f"other shape ({_shape_words(other)})", other)]
    if real is not None:
        cases.append((f"real input {Path(real).name}", real_inputs(config, source, real, list(inputs))))
    with atomic_folder(out, overwrite=overwrite) as tmp:
        report = _export_and_check(model, source, tmp / ONNX_FILE, inputs, outputs, axes, cases, exporter)
        report.out = str(out)
        if quantize:
            report.quantized = _quantize(model, config, tmp, cases[-1], outputs)  # the real input, if given
            if not report.quantized.passed:
                raise _failure(report.quantized)
        _write_beside(source, config, tmp, report)
    return report


def _export_and_check(model: nn.Module, source: str, path: Path, inputs: dict[str, torch.Tensor],
                      outputs: list[str], axes: dict[str, dict[int, str]], cases: list,
                      exporter: str) -> ExportReport:
    """Export with ``exporter`` (``auto``: TorchScript, then dynamo if TorchScript cannot export the model or
    its graph fails the check, e.g. a size frozen by the trace) and check; the first that passes is kept."""
    problems: list[InterpruneError] = []
    for name in ("torchscript", "dynamo") if exporter == "auto" else (exporter,):
        path.unlink(missing_ok=True)
        start = time.perf_counter()
        try:
            _export(model, inputs, outputs, axes, path, name)
        except InterpruneError as err:
            problems.append(err)
            continue
        why = str(problems[0]).removesuffix("; nothing was written") if problems else ""
        used = f"torch.onnx.export ({name}), torch {torch.__version__}" + (
            f"; used instead of the TorchScript exporter, whose graph was not kept: {why}" if problems else "")
        report = ExportReport(source, "", used, OPSETS[name], time.perf_counter() - start, axes, outputs)
        report.checks = _run_checks(model, path, cases, outputs)
        failed = next((check for check in report.checks if not check.passed), None)
        if failed is None:
            return report
        problems.append(_failure(failed))
    first = problems[0]
    raise type(first)(str(first) + "".join(f"; then with dynamo: {later}" for later in problems[1:]))


def _failure(failed: CheckResult) -> CheckFailed:
    return CheckFailed(f"the ONNX model differs from PyTorch on output {failed.failed!r} ({failed.label}; "
                       f"{failed.rule}; largest difference {failed.largest[failed.failed]:.3g}"
                       f"{'; ' + failed.detail if failed.detail else ''}); nothing was written")


class CheckFailed(InterpruneError):
    """The exported model is not the same function; the CLI exits 1 (the input was fine, the result is not)."""

    exit_code = 1


def _shape_words(inputs: dict[str, torch.Tensor]) -> str:
    return ", ".join(f"{k} {'x'.join(map(str, v.shape))}" for k, v in inputs.items())


def _torch_outputs(model: nn.Module, inputs: dict[str, torch.Tensor], outputs: list[str]) -> dict[str, Any]:
    with torch.inference_mode():
        found = _Flat(model, list(inputs), outputs)(*inputs.values())
    return {name: value.numpy() for name, value in zip(outputs, found)}


def _run_checks(model: nn.Module, path: Path, cases: list, outputs: list[str]) -> list[CheckResult]:
    """Each case through ONNX Runtime and PyTorch; a graph ONNX Runtime cannot run fails on the first output."""
    runner = session(path)
    results = []
    for label, inputs in cases:
        want = _torch_outputs(model, inputs, outputs)
        try:
            got = dict(zip(outputs, runner.run(outputs, feed(runner, inputs))))
        except Exception as err:  # e.g. a shape the trace froze meets another one
            results.append(CheckResult(label, "ONNX Runtime runs the graph", {outputs[0]: float("inf")}, outputs[0],
                                       f"ONNX Runtime failed: {first_line(err)[:200]}"))
            continue
        results.append(compare(label, want, got))
    return results



def _quantize(model: nn.Module, config: Any, folder: Path, case: tuple[str, dict[str, torch.Tensor]],
              outputs: list[str]) -> CheckResult:
    """ONNX Runtime's dynamic int8 (weights int8, activations quantised on the fly), checked on task outputs."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), _quiet_root_logger():
        warnings.simplefilter("ignore")  # its advice to pre-process is for static quantization
        quantize_dynamic(folder / ONNX_FILE, folder / QUANTIZED_FILE, weight_type=QuantType.QInt8)
    what, inputs = case
    runner = session(folder / QUANTIZED_FILE)
    got = dict(zip(outputs, runner.run(outputs, feed(runner, inputs))))
    want = _torch_outputs(model, inputs, outputs)
    label = f"{QUANTIZED_FILE} (dynamic int8) on the {what}"
    if is_detector(config) and {"logits", "pred_boxes"} <= set(outputs):
        return compare_detections(label, want, got, config.num_labels)
    main = "logits" if "logits" in outputs else outputs[0]
    return compare_direction(label, main, want[main], got[main])


@contextlib.contextmanager
def _quiet_root_logger():
    """onnxruntime.quantization warns through the root logger; silence it for this call only."""
    import logging

    before = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(before)


def _write_beside(source: str, config: Any, folder: Path, report: ExportReport) -> None:
    """config.json, the processor or tokenizer files (a detector's default processor when it has none), the report."""
    shutil.copy2(Path(source) / "config.json", folder / "config.json")
    copy_processor_files(source, folder, sentence_transformers=False)  # no PyTorch weights here to load
    if is_detector(config) and not (folder / "preprocessor_config.json").is_file():
        load_processor(source, config).save_pretrained(folder)
    report.out = str(report.out)
    (folder / "export.json").write_text(json.dumps(report.to_dict(), indent=1))


def real_inputs(config: Any, source: str, path: str | os.PathLike,
                names: list[str] | None = None) -> dict[str, torch.Tensor]:
    """One real input through the model's own processor (an image) or tokenizer (a text file); of a text, the
    tokenizer's outputs among ``names`` (the graph's inputs: token_type_ids where the export takes them)."""
    path = Path(path)
    if path.suffix.lower() in (".txt", ".text"):
        from transformers import AutoTokenizer

        try:
            tokenizer = AutoTokenizer.from_pretrained(source)
        except (OSError, ValueError):
            raise InterpruneError(f"--input {path}: {source} has no tokenizer files to read a text with") from None
        found = tokenizer(path.read_text().strip(), return_tensors="pt", truncation=True,
                          max_length=getattr(config, "max_position_embeddings", 512))
        return {k: found[k] for k in names or ("input_ids", "attention_mask") if k in found}
    from PIL import Image

    try:
        image = Image.open(path).convert("RGB")
    except OSError as err:
        raise InterpruneError(f"--input {path}: not an image or a .txt file ({first_line(err)})") from None
    processor = load_processor(source, config)
    found = processor(images=[image], return_tensors="pt")
    return {k: found[k] for k in ("pixel_values", "pixel_mask") if k in found}
