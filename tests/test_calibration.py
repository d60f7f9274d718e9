"""Calibration inputs: a seeded sample of the user's examples, through the model's own processor."""

from __future__ import annotations

import random

import pytest
import torch
from PIL import Image

from interprune.errors import InterpruneError
from interprune.preserve.calibration import calibration_inputs


class Tokenizer:
    """Records the lines it is given; ids are the lines' lengths."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    def batch_decode(self, ids):  # what marks a tokenizer
        return ids

    def __call__(self, lines, padding, truncation, return_tensors):
        self.seen = list(lines)
        return {"input_ids": torch.tensor([[len(line)] for line in lines])}


class ImageProcessor:
    size = {"shortest_edge": 8}

    def __call__(self, images, return_tensors):
        pixels = torch.stack([torch.as_tensor(im).float().mean() * torch.ones(3, 4, 4) for im in images])
        return {"pixel_values": pixels, "pixel_mask": torch.ones(len(images), 4, 4), "labels": None}


def test_text_is_a_seeded_sample_of_the_non_empty_lines(tmp_path):
    lines = [f"example {i}" for i in range(10)]
    path = tmp_path / "text.txt"
    path.write_text("\n".join(lines[:5] + ["", "   "] + lines[5:]) + "\n")
    tokenizer = Tokenizer()
    batch = calibration_inputs(path, tokenizer, count=4, seed=7)
    assert tokenizer.seen == random.Random(7).sample(lines, 4)
    assert batch["input_ids"].tolist() == [[len(line)] for line in tokenizer.seen]
    calibration_inputs(path, tokenizer, count=50)
    assert tokenizer.seen == lines  # fewer lines than asked: all of them, in order


def test_images_are_a_sorted_seeded_sample_with_only_what_the_model_reads(tmp_path):
    for i in range(5):
        Image.new("L", (6, 6), color=i * 10).convert("RGB").save(tmp_path / f"{i}.png")
    batch = calibration_inputs(tmp_path, ImageProcessor(), count=3, seed=1)
    assert set(batch) == {"pixel_values", "pixel_mask"}
    chosen = sorted(random.Random(1).sample(sorted(tmp_path.glob("*.png")), 3))
    expected = [int(p.stem) * 10 for p in chosen]  # each image's grey level survives as its mean
    assert batch["pixel_values"][:, 0, 0, 0].tolist() == expected


@pytest.mark.parametrize("setup, processor, message", [
    (lambda p: p / "missing", Tokenizer(), "does not exist"),
    (lambda p: (p / "empty.txt").write_text("\n \n") and p / "empty.txt", Tokenizer(), "has no non-empty lines"),
    (lambda p: (p / "t.txt").write_text("a\n") and p / "t.txt", ImageProcessor(), "is text, but the model has no tokenizer"),
    (lambda p: p, ImageProcessor(), "no images"),
])
def test_unusable_data_is_one_line_before_any_work(tmp_path, setup, processor, message):
    with pytest.raises(InterpruneError, match=message):
        calibration_inputs(setup(tmp_path), processor)


def test_images_need_an_image_processor(tmp_path):
    Image.new("RGB", (6, 6)).save(tmp_path / "a.png")
    with pytest.raises(InterpruneError, match="holds images, but the model has no image processor"):
        calibration_inputs(tmp_path, Tokenizer())
    with pytest.raises(InterpruneError, match="at least 1"):
        calibration_inputs(tmp_path, ImageProcessor(), count=0)


def test_images_processed_a_few_at_a_time_give_the_processors_one_batch(tmp_path):
    """Chunks are padded to the largest image of all, as the processor pads one batch."""
    import numpy as np
    from transformers import DetrImageProcessor

    from interprune.data.loader import load_image
    from interprune.preserve.calibration import _processed

    gen = np.random.default_rng(0)
    files = []
    for i, (w, h) in enumerate([(40, 30), (30, 50), (64, 20), (20, 20), (50, 44)]):
        files.append(tmp_path / f"{i}.png")
        Image.fromarray((gen.random((h, w, 3)) * 255).astype("uint8")).save(files[-1])
    processor = DetrImageProcessor(size={"shortest_edge": 32, "longest_edge": 64})
    whole = processor(images=[load_image(f) for f in files], return_tensors="pt")
    chunked = _processed(processor, files, load_image, chunk=2)
    assert set(chunked) == {"pixel_values", "pixel_mask"}
    for key in chunked:
        assert chunked[key].dtype == whole[key].dtype
        assert torch.equal(chunked[key], whole[key]), key


def test_images_made_a_mini_batch_at_a_time_equal_the_one_batch_split(tmp_path):
    """``calibration_batches`` processes each mini-batch when first asked, padded to the largest image of
    all: the mini-batches are the one batch's slices, whatever the mini-batch size."""
    import numpy as np
    from transformers import DetrImageProcessor

    from interprune.preserve.calibration import calibration_batches
    from interprune.walk import split_batch

    gen = np.random.default_rng(0)
    for i, (w, h) in enumerate([(40, 30), (30, 50), (64, 20), (20, 20), (50, 44)]):
        Image.fromarray((gen.random((h, w, 3)) * 255).astype("uint8")).save(tmp_path / f"{i}.png")
    processor = DetrImageProcessor(size={"shortest_edge": 32, "longest_edge": 64})
    whole = calibration_inputs(tmp_path, processor, count=5)
    for size in (1, 2, 5):
        batches = calibration_batches(tmp_path, processor, count=5, batch=size)
        assert batches.made and batches.sizes == [len(p["pixel_values"]) for p in split_batch(whole, size)]
        for part, expected in zip(batches, split_batch(whole, size)):
            assert set(part) == set(expected)
            for key in part:
                assert torch.equal(part[key], expected[key]), (size, key)
    assert calibration_batches(tmp_path, processor, count=5).sizes == [5]  # small images: 8 to a mini-batch


def test_text_batches_are_the_tokenized_lines_split(tmp_path):
    from interprune.preserve.calibration import calibration_batches

    path = tmp_path / "text.txt"
    path.write_text("\n".join(f"line {i}" * (i + 1) for i in range(5)))
    batches = calibration_batches(path, Tokenizer(), count=5, batch=2)
    whole = calibration_inputs(path, Tokenizer(), count=5)
    assert not batches.made and batches.sizes == [2, 2, 1]
    assert torch.cat([b["input_ids"] for b in batches]).tolist() == whole["input_ids"].tolist()
