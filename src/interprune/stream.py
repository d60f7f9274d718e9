"""Streamed weights: shrink a checkpoint bigger than memory, one tensor in and one shard out at a time.

mergekit reads tensors lazily from safetensors so that memory stays near one tensor; we do the same for
the data-free methods. The source is a ``Checkpoint`` (one ``model.safetensors`` or shards named by
``model.safetensors.index.json``) read a tensor at a time (``tensorfile``: by byte range, not through a
mapped file), under the names transformers gives them as it loads (``hf.naming``); both models are built on
the meta device (shapes only), and every target tensor goes to a ``ShardWriter`` that writes it into a
Hugging Face shard of at most ``max_shard_size`` bytes as soon as it is made, under the name
``save_pretrained`` would give it, plus their index. Peak memory is about one source tensor, not source plus
target. The folder is written atomically as a whole.
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
from .tensorfile import DTYPES, TensorFileWriter, nbytes, read_header, read_tensor

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
        self.headers: dict[Path, tuple[int, dict]] = {}
        for path in sorted(set(self.files.values())) or [self.folder / SINGLE]:
            try:  # every header read now: a damaged file is refused before work
                self.headers[path] = read_header(path)
            except (OSError, ValueError) as err:
                raise InterpruneError(f"cannot read the weights of {self.folder}: {path.name}: {first_line(err)}; "
                                      f"the file is truncated or not a model file: save or download it again") from None
            if not self.files:
                self.files = {name: path for name in self.headers[path][1]}
        self.stored = {name: name for name in self.files}  # the name a tensor is asked for -> its key in the file
        self._fds: dict[Path, int] = {}

    def named_for(self, model: torch.nn.Module) -> "Checkpoint | None":
        """This checkpoint under ``model``'s tensor names, or ``None`` when it cannot be read one tensor at a
        time. transformers 5 renames keys as it loads (DETR's ``backbone.conv_encoder`` -> ``backbone``,
        ``out_proj`` -> ``o_proj``) and renames them back as it saves; a key its loader *converts* (experts
        stacked from one tensor each) needs several tensors at once."""
        from .hf.naming import load_names

        names = load_names(model, self.files)
        if names is None:
            return None
        view = object.__new__(Checkpoint)
        view.folder, view.headers, view._fds = self.folder, self.headers, self._fds
        view.stored = names
        view.files = {name: self.files[key] for name, key in names.items()}
        return view

    @staticmethod
    def found(folder: str | os.PathLike) -> bool:
        folder = Path(folder)
        return folder.is_dir() and ((folder / INDEX).is_file() or (folder / SINGLE).is_file())

    def entry(self, name: str) -> dict:
        """The header entry of ``name``: its dtype, shape and byte range."""
        return self.headers[self.files[name]][1][self.stored[name]]

    def __getitem__(self, name: str) -> Tensor:
        if name not in self.files:
            raise KeyError(name)
        path = self.files[name]
        if path not in self._fds:
            self._fds[path] = os.open(path, os.O_RDONLY)
        return read_tensor(self._fds[path], self.headers[path][0], self.entry(name))

    def __iter__(self) -> Iterator[str]:
        return iter(self.files)

    def __len__(self) -> int:
        return len(self.files)

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()


class ShardWriter:
    """Tensors in, Hugging Face shards out: ``model-0000i-of-0000n.safetensors`` of at most ``max_bytes``
    each and their index, or one ``model.safetensors`` when everything fits in one shard. Every tensor is
    declared up front (``layout``: name, dtype, shape, in the order they will come), so each shard's
    header is written first and each value goes to disk as it arrives: no shard is held in memory."""

    def __init__(self, folder: Path, max_bytes: int, layout: list[tuple[str, torch.dtype, tuple[int, ...]]]):
        self.folder = folder
        self.shards: list[list[tuple[str, torch.dtype, tuple[int, ...]]]] = [[]]
        size, self.total = 0, 0
        for item in layout:
            size_of = nbytes(item[1], item[2])
            if self.shards[-1] and size + size_of > max_bytes:
                self.shards.append([])
                size = 0
            self.shards[-1].append(item)
            size += size_of
            self.total += size_of
        self.order = [(name, i) for i, shard in enumerate(self.shards) for name, _, _ in shard]  # arrival order
        self.next, self.waiting = 0, {}
        self.writer: TensorFileWriter | None = None
        self.current = -1

    def add(self, name: str, value: Tensor) -> None:
        """Write ``value`` now if it is the next tensor of the layout (and whatever waited for it), else keep
        it until its turn."""
        self.waiting[name] = value
        while self.next < len(self.order) and self.order[self.next][0] in self.waiting:
            following, shard = self.order[self.next]
            while self.current < shard:
                self._next_shard()
            self.writer.write(following, self.waiting.pop(following))
            self.next += 1

    def _next_shard(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.current += 1
        self.writer = TensorFileWriter(self.folder / f".shard-{self.current + 1}", self.shards[self.current])

    def close(self) -> None:
        """Finish the last shard (every declared tensor must have come) and name the shards as Hugging Face
        does, with their index when there are several."""
        if self.waiting and self.next == len(self.order):
            raise ValueError(f"{sorted(self.waiting)[:3]} are not in the layout")
        while self.current + 1 < len(self.shards):  # an empty model, or trailing empty shards
            self._next_shard()
        self.writer.close()
        count = len(self.shards)
        if count == 1:
            os.replace(self.folder / ".shard-1", self.folder / SINGLE)
            return
        weight_map = {}
        for i, shard in enumerate(self.shards, 1):
            final = f"model-{i:05d}-of-{count:05d}.safetensors"
            os.replace(self.folder / f".shard-{i}", self.folder / final)
            weight_map.update({name: final for name, _, _ in shard})
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
    needs the target's own initial values (a grown axis, a new layer, ``random``) or when transformers
    converts some tensor as it loads or saves (several tensors into one): then use ``shrink``."""
    from .hf.models import build_model, check_writable, load_config
    from .plan import make_plan
    from .hf.config import target_config
    from .hf.inputs import check_target
    from .hf.naming import save_names

    from .weights.resample import RESAMPLERS as METHODS
    from .weights.shrink import _check_vocabulary

    if method not in METHODS:
        raise InterpruneError(f"unknown method {method!r}; run 'interprune methods' to list them")
    checkpoint = Checkpoint(source)  # a missing shard is one line, before any work
    config = load_config(source)
    target = build_model(target_config(config, overrides), meta=True)
    _check_vocabulary(source, config, target.config)
    model = build_model(config, meta=True)
    checkpoint, saved = checkpoint.named_for(model), save_names(target, target.state_dict())
    if checkpoint is None or saved is None:  # converted on load or save: several tensors at once
        return None
    _check_on_meta(target, overrides, check_target, seed)
    dtype = dtype or _checkpoint_dtype(checkpoint)
    plan = make_plan(model, target)
    check_writable(Path(out))
    try:
        return _write(Write(source, out, overwrite, max_shard_size, dtype, progress, saved), checkpoint, model,
                      target, method, seed, plan, overrides)
    except NeedsValues:  # the temporary folder is gone; the caller shrinks in memory
        return None
    finally:
        checkpoint.close()


@dataclass(frozen=True)
class Write:
    """Where and how a streamed shrink writes."""

    source: Any
    out: Any
    overwrite: bool
    max_shard_size: int
    dtype: torch.dtype
    progress: Callable[[int, int], None] | None
    names: dict[str, str]  # the target's tensor name -> the name save_pretrained writes


def _write(job: Write, checkpoint: Checkpoint, model: Any, target: Any, method: str, seed: int, plan: Any,
           overrides: dict[str, Any]) -> Any:
    """Fill the meta target tensor by tensor into shards of a temporary folder, renamed when complete."""
    from .atomic import atomic_folder
    from .hf.processors import copy_processor_files
    from .weights.transfer import transfer

    tied = _tied(target)
    slots = {name: slot for name, slot in target.state_dict().items() if name not in tied}
    kind = {name: job.dtype if slot.is_floating_point() else slot.dtype for name, slot in slots.items()}
    layout = [(job.names[name], kind[name], tuple(slot.shape)) for name, slot in slots.items()]
    with atomic_folder(job.out, overwrite=job.overwrite) as tmp:
        writer = ShardWriter(tmp, job.max_shard_size, layout)
        done, total = [0], len(target.state_dict())

        def put(name: str, slot: Tensor, value: Tensor | None) -> None:
            if name not in tied:  # a tied copy is not stored (the checkpoint leaves it out too)
                if value is None or value.device.type == "meta":
                    raise NeedsValues(name)
                writer.add(job.names[name], value.to(kind[name]))
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
    for name in checkpoint:
        dtype = DTYPES[checkpoint.entry(name)["dtype"]]
        if dtype in (torch.bfloat16, torch.float16, torch.float32, torch.float64):
            return dtype
    return torch.float32


def _check_on_meta(target: Any, overrides: dict[str, Any], check: Callable, seed: int) -> None:
    """The target's dummy forward on the meta device (shapes only, no memory). When that fails (a forward
    that needs values, such as DETR's ``.item()``, or a real error) the target runs on a build whose
    parameters are zeros, not initial values (DETR-R50's random initialisation alone takes 0.7 s); only when
    that fails too is it checked on a real build, whose error is the one to report."""
    from .hf.inputs import dummy_inputs
    from .hf.models import build_model

    try:
        with torch.no_grad():
            target(**{k: v.to("meta") for k, v in dummy_inputs(target).items()})
        return
    except Exception:
        pass
    try:
        check(build_model(target.config, seed, initialise=False), overrides)
        return
    except Exception:
        pass
    check(build_model(target.config, seed), overrides)
