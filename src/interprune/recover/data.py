"""Unlabelled inputs of whatever kind the model takes: text lines through its tokenizer, images through its
image processor. Checked before any work: data the processor cannot read is one line.

Batches follow the run's step (``data.loader.StepSampler``), so a resumed recovery sees exactly the
batches an uninterrupted one would; a few examples are held out to validate the distillation loss.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from ..data.loader import StepSampler
from ..errors import InterpruneError, first_line

__all__ = ["Unlabelled", "open_unlabelled", "model_inputs"]


class Unlabelled(Dataset):
    """Text lines or image files; items are raw examples, the collator turns a batch into model inputs."""

    def __init__(self, items: list[Any], kind: str) -> None:
        self.items, self.kind = items, kind

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, key: int | tuple[int, int]) -> Any:
        index = key[0] if isinstance(key, tuple) else key
        item = self.items[index]
        if self.kind == "images":
            from ..data.loader import load_image

            return load_image(item)
        return item


class Collate:
    """The model's own processor on a batch (picklable for worker processes)."""

    def __init__(self, processor: Any, kind: str, max_length: int) -> None:
        self.processor, self.kind, self.max_length = processor, kind, max_length

    def __call__(self, batch: list[Any]) -> dict[str, torch.Tensor]:
        if self.kind == "text":
            return dict(self.processor(list(batch), padding=True, truncation=True, max_length=self.max_length,
                                       return_tensors="pt"))
        encoded = self.processor(images=list(batch), return_tensors="pt")
        return {k: encoded[k] for k in ("pixel_values", "pixel_mask") if k in encoded}


def open_unlabelled(data: str | os.PathLike, processor: Any, *, held_out: int, seed: int = 0,
                    max_length: int = 128) -> tuple[Unlabelled, Unlabelled, Collate]:
    """Training and held-out examples of ``data`` and the collator, after preparing one example (so a
    file the processor cannot read fails here, before any model is loaded)."""
    from ..preserve.calibration import _image_files

    path = Path(data)
    if not path.exists():
        raise InterpruneError(f"--data {path} does not exist; give a text file (one example per line), an image "
                              f"folder or a COCO/Roboflow dataset")
    text = path.is_file() and path.suffix != ".json"
    tokenizer = callable(getattr(processor, "batch_decode", None)) and not hasattr(processor, "image_processor")
    if text:
        if not tokenizer:
            raise InterpruneError(f"--data {path} is text, but the model's processor reads images; give images")
        try:
            items = [line.strip() for line in path.read_text().splitlines() if line.strip()]
        except UnicodeDecodeError:
            raise InterpruneError(f"--data {path} is not a UTF-8 text file; give one example per line") from None
        kind = "text"
    else:
        if tokenizer or not (hasattr(processor, "image_mean") or hasattr(processor, "size")):
            raise InterpruneError(f"--data {path} holds images, but the model's processor reads text; give a text "
                                  f"file with one example per line")
        items, kind = _image_files(path), "images"
    if len(items) < 2:
        raise InterpruneError(f"--data {path} has {len(items)} usable example(s); give at least 2 (some are held out)")
    collate = Collate(processor, kind, max_length)
    try:
        collate([Unlabelled(items, kind)[0]])
    except Exception as err:
        raise InterpruneError(f"--data {path}: the model's processor cannot read {items[0]!s:.80}: "
                              f"{first_line(err)}") from None
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    count = min(held_out, len(items) // 4) or 1
    held = sorted(order[:count])
    rest = sorted(order[count:])
    return Unlabelled([items[i] for i in rest], kind), Unlabelled([items[i] for i in held], kind), collate


def model_inputs(model: Any, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """What ``model.forward`` takes of a batch; an encoder-decoder reads the same text on both sides."""
    import inspect

    params = inspect.signature(model.forward).parameters
    inputs = {k: v for k, v in batch.items() if k in params}
    if "decoder_input_ids" in params and getattr(model.config, "is_encoder_decoder", False) and "input_ids" in inputs:
        inputs["decoder_input_ids"] = inputs["input_ids"]
        if "decoder_attention_mask" in params and "attention_mask" in inputs:
            inputs["decoder_attention_mask"] = inputs["attention_mask"]
    return inputs


class GroupedStepSampler(StepSampler):
    """A ``StepSampler`` whose batches hold examples of similar length, so little of a text batch is padding
    (about half of a random batch of sentences is): each cycle's seeded permutation is cut into chunks of
    ``group`` batches, each chunk sorted by length and cut into batches, and those batches shuffled (seeded).
    Still a pure function of (seed, step), so a resumed run sees the same batches."""

    def __init__(self, lengths: list[int], batch_size: int, steps: int, seed: int = 0, group: int = 50) -> None:
        super().__init__(len(lengths), batch_size, steps, seed)
        self.lengths, self.group = lengths, group

    def _order(self, cycle: int) -> list[int]:
        order = super()._order(cycle)
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + cycle + 1)
        span, out = self.batch_size * self.group, []
        for start in range(0, len(order), span):
            chunk = sorted(order[start:start + span], key=lambda i: (self.lengths[i], i))
            batches = [chunk[i:i + self.batch_size] for i in range(0, len(chunk), self.batch_size)]
            out += [i for b in torch.randperm(len(batches), generator=generator).tolist() for i in batches[b]]
        return out


def grouped_sampler(lengths: list[int], batch_size: int, steps: int, seed: int, group: int = 50) -> GroupedStepSampler:
    """The training sampler of ``recover`` for text: batches of similar length (``GroupedStepSampler``)."""
    return GroupedStepSampler(lengths, batch_size, steps, seed, group)


def loaders(train: Unlabelled, held: Unlabelled, collate: Collate, *, batch_size: int, steps: int, seed: int,
            workers: int, group_by_length: bool = True) -> tuple[DataLoader, DataLoader]:
    extra = {"num_workers": workers, "persistent_workers": workers > 0}
    if train.kind == "text" and group_by_length:
        sampler = grouped_sampler([len(item) for item in train.items], batch_size, steps, seed)
    else:
        sampler = StepSampler(len(train), batch_size, steps, seed)
    return (DataLoader(train, batch_size=batch_size, sampler=sampler,
                       collate_fn=collate, generator=torch.Generator().manual_seed(seed), **extra),
            DataLoader(held, batch_size=batch_size, shuffle=False, collate_fn=collate,
                       generator=torch.Generator().manual_seed(seed), **extra))
