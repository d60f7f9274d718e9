"""Streamed weights: shrink a checkpoint bigger than memory, one tensor in and one shard out at a time.

mergekit reads tensors lazily from safetensors so that memory stays near one tensor; we do the same for
the data-free methods. The source is a ``Checkpoint`` (one ``model.safetensors`` or shards named by
``model.safetensors.index.json``) read a tensor at a time, both models are built on the meta device (shapes
only), and every target tensor goes to a ``ShardWriter`` that writes Hugging Face shards of at most
``max_shard_size`` bytes plus their index. Peak memory is about one shard plus one source tensor, not
source plus target. The folder is written atomically as a whole.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch import Tensor

from .errors import InterpruneError, first_line

__all__ = ["Checkpoint", "ShardWriter", "parse_size", "stream_shrink", "INDEX"]

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"


def parse_size(text: str | int) -> int:
    """``"5GB"``, ``"500MB"``, ``"200KB"`` or a byte count -> bytes (decimal units, as Hugging Face)."""
    if isinstance(text, int):
        return text
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]i?B|B)?\s*", str(text), re.IGNORECASE)
    if not match:
        raise InterpruneError(f"size {text!r} is not a size; write e.g. 5GB, 500MB or a number of bytes")
    unit = (match.group(2) or "B").upper()
    scale = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}[unit]
    return int(float(match.group(1)) * scale)


class Checkpoint(Mapping[str, Tensor]):
    """The tensors of a safetensors checkpoint folder, read when asked for (a mapping name -> tensor)."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        index = self.folder / INDEX
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (ValueError, KeyError, TypeError) as err:
                raise InterpruneError(f"{index} is not a safetensors index ({err}); restore it from the source") from None
            missing = sorted({f for f in weight_map.values() if not (self.folder / f).is_file()})
            if missing:
                raise InterpruneError(f"{index} names {len(missing)} shard(s) that are not in {self.folder}: "
                                      f"{', '.join(missing[:3])}; copy every shard of the checkpoint")
            self.files = {name: self.folder / f for name, f in weight_map.items()}
        elif (self.folder / SINGLE).is_file():
            self.files = {}
        else:
            raise InterpruneError(f"{self.folder} has no {SINGLE} or {INDEX}")
        self._handles: dict[Path, Any] = {}
        for path in sorted(set(self.files.values())) or [self.folder / SINGLE]:
            names = self._handle(path).keys()  # every header read now: a damaged file is refused before work
            if not self.files:
                self.files = {name: path for name in names}

    @staticmethod
    def found(folder: str | os.PathLike) -> bool:
        folder = Path(folder)
        return folder.is_dir() and ((folder / INDEX).is_file() or (folder / SINGLE).is_file())

    def _handle(self, path: Path) -> Any:
        from safetensors import safe_open

        if path not in self._handles:
            try:
                self._handles[path] = safe_open(str(path), "pt")
            except Exception as err:
                raise InterpruneError(f"cannot read the weights of {self.folder}: {first_line(err)}; the file is "
                                      f"truncated or not a model file: save or download it again") from None
        return self._handles[path]

    def __getitem__(self, name: str) -> Tensor:
        if name not in self.files:
            raise KeyError(name)
        return self._handle(self.files[name]).get_tensor(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self.files)

    def __len__(self) -> int:
        return len(self.files)


class ShardWriter:
    """Tensors in, Hugging Face shards out: ``model-0000i-of-0000n.safetensors`` of at most ``max_bytes``
    each and their index, or one ``model.safetensors`` when everything fits in one shard."""

    def __init__(self, folder: Path, max_bytes: int):
        self.folder, self.max_bytes = folder, max_bytes
        self.pending: dict[str, Tensor] = {}
        self.size, self.total = 0, 0
        self.shards: list[list[str]] = []
        self.written = 0

    def add(self, name: str, value: Tensor) -> None:
        size = value.numel() * value.element_size()
        if self.pending and self.size + size > self.max_bytes:
            self._flush()
        self.pending[name] = value.detach().contiguous()
        self.size += size
        self.total += size

    def _flush(self) -> None:
        from safetensors.torch import save_file

        self.written += 1
        save_file(self.pending, str(self.folder / f".shard-{self.written}"), metadata={"format": "pt"})
        self.shards.append(list(self.pending))
        self.pending, self.size = {}, 0

    def close(self) -> None:
        if self.pending or not self.shards:
            self._flush()
        count = len(self.shards)
        if count == 1:
            os.replace(self.folder / ".shard-1", self.folder / SINGLE)
            return
        weight_map = {}
        for i, names in enumerate(self.shards, 1):
            final = f"model-{i:05d}-of-{count:05d}.safetensors"
            os.replace(self.folder / f".shard-{i}", self.folder / final)
            weight_map.update({name: final for name in names})
        index = {"metadata": {"total_size": self.total}, "weight_map": weight_map}
        (self.folder / INDEX).write_text(json.dumps(index, indent=2))


class NeedsValues(Exception):
    """A target tensor keeps the target's own initial values, which a meta-device target does not have."""


def stream_shrink(
    source: str | os.PathLike,
    overrides: dict[str, Any],
    method: str,
    out: str | os.PathLike,
    *,
    seed: int = 0,
    dtype: torch.dtype | None = None,
    max_shard_size: int = 5 * 10**9,
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> Any:
    """Shrink the checkpoint folder ``source`` into ``out`` without holding either model in memory; the
    result equals ``shrink`` + ``save``. Returns the transfer report, or ``None`` when some target tensor
    needs the target's own initial values (a grown axis, a new layer, ``random``): then use ``shrink``."""
    from .hf.models import build_model, check_writable, load_config
    from .plan import make_plan
    from .hf.config import target_config
    from .hf.inputs import check_target

    from .weights.resample import RESAMPLERS as METHODS
    from .weights.shrink import _check_vocabulary

    if method not in METHODS:
        raise InterpruneError(f"unknown method {method!r}; run 'interprune methods' to list them")
    checkpoint = Checkpoint(source)  # a missing shard is one line, before any work
    config = load_config(source)
    target = build_model(target_config(config, overrides), meta=True)
    _check_vocabulary(source, config, target.config)
    _check_on_meta(target, overrides, check_target, seed)
    model = build_model(config, meta=True)
    dtype = dtype or _checkpoint_dtype(checkpoint)
    plan = make_plan(model, target)
    check_writable(Path(out))
    try:
        return _write(Write(source, out, overwrite, max_shard_size, dtype, progress), checkpoint, model, target,
                      method, seed, plan, overrides)
    except NeedsValues:  # the temporary folder is gone; the caller shrinks in memory
        return None


@dataclass(frozen=True)
class Write:
    """Where and how a streamed shrink writes."""

    source: Any
    out: Any
    overwrite: bool
    max_shard_size: int
    dtype: torch.dtype
    progress: Callable[[int, int], None] | None


def _write(job: Write, checkpoint: Checkpoint, model: Any, target: Any, method: str, seed: int, plan: Any,
           overrides: dict[str, Any]) -> Any:
    """Fill the meta target tensor by tensor into shards of a temporary folder, renamed when complete."""
    from .atomic import atomic_folder
    from .hf.processors import copy_processor_files
    from .weights.transfer import transfer

    tied = _tied(target)
    with atomic_folder(job.out, overwrite=job.overwrite) as tmp:
        writer = ShardWriter(tmp, job.max_shard_size)
        done, total = [0], len(target.state_dict())

        def put(name: str, slot: Tensor, value: Tensor | None) -> None:
            if name not in tied:  # a tied copy is not stored (the checkpoint leaves it out too)
                if value is None or value.device.type == "meta":
                    raise NeedsValues(name)
                writer.add(name, value.to(job.dtype))
            done[0] += 1
            if job.progress is not None:
                job.progress(done[0], total)

        try:
            report = transfer(model, target, method, seed=seed, plan=plan, state=checkpoint, put=put)
        except RuntimeError as err:  # a resampling that reads the target's own values (growing)
            raise NeedsValues(str(err)) if "meta" in str(err) else err
        writer.close()
        target.config.dtype = str(job.dtype).removeprefix("torch.")
        target.config.save_pretrained(tmp)
        copy_processor_files(job.source, tmp)
        report.source, report.overrides = str(job.source), dict(overrides)
        (tmp / "interprune.json").write_text(json.dumps(report.to_dict(), indent=1))
    return report


def _tied(model: torch.nn.Module) -> set[str]:
    """Names of tensors that repeat an earlier one (tied weights are saved once, under the first name)."""
    seen, tied = set(), set()
    for name, value in model.state_dict(keep_vars=True).items():
        if id(value) in seen:
            tied.add(name)
        seen.add(id(value))
    return tied


def _checkpoint_dtype(checkpoint: Checkpoint) -> torch.dtype:
    """The checkpoint's floating dtype, read from the headers (no tensor is loaded)."""
    kinds = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32, "F64": torch.float64}
    for name in checkpoint:
        kind = checkpoint._handle(checkpoint.files[name]).get_slice(name).get_dtype()
        if kind in kinds:
            return kinds[kind]
    return torch.float32


def _check_on_meta(target: Any, overrides: dict[str, Any], check: Callable, seed: int) -> None:
    """The target's dummy forward on the meta device (shapes only, no memory); when that fails (a real
    error, or a forward that needs values) the target is checked on a real build, which says why."""
    from .hf.inputs import dummy_inputs
    from .hf.models import build_model

    try:
        with torch.no_grad():
            target(**{k: v.to("meta") for k, v in dummy_inputs(target).items()})
        return
    except Exception:
        pass
    real = build_model(target.config, seed)
    check(real, overrides)
    del real
