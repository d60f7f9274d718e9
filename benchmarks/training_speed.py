"""Training throughput: our data pipeline against the reference setup the paper used.

The reference is the DETR fine-tuning tutorial the paper adapted: a ``torchvision`` ``CocoDetection``
dataset that calls the Hugging Face image processor on every sample (then, the numpy/PIL processor;
now ``DetrImageProcessorPil``), a collate that zero-pads to the batch's largest image, and the same
Lightning module. Ours decodes and augments uint8 tensors with transforms v2 and calls the model's
(torchvision) processor once per batch, in worker processes. Same model, batch size, images, steps.

Also prints the loader alone (images/s) beside the model step, to show preprocessing is not the
bottleneck.

    python benchmarks/training_speed.py [--steps 20] [--image-size 256] [--model paper-small|tiny]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
import torchvision
from torch.utils.data import DataLoader

from interprune.data import make_loaders, open_dataset
from interprune.data.rocks import NAMES, draw_rocks
from interprune.data.synthetic import write_dataset
from interprune.train.module import DetectionModule


class ReferenceCoco(torchvision.datasets.CocoDetection):
    """The tutorial's dataset: the image processor runs per sample, in ``__getitem__``."""

    def __init__(self, folder: Path, processor) -> None:
        super().__init__(str(folder), str(folder / "_annotations.coco.json"))
        self.processor = processor

    def __getitem__(self, idx):
        image, target = super().__getitem__(idx)
        encoding = self.processor(images=image, annotations={"image_id": self.ids[idx], "annotations": target},
                                  return_tensors="pt")
        return encoding["pixel_values"].squeeze(0), encoding["labels"][0]


def reference_collate(batch):
    """What ``processor.pad`` did in the tutorial: zero-pad to the largest image, mask the padding."""
    images = [item[0] for item in batch]
    h, w = max(i.shape[1] for i in images), max(i.shape[2] for i in images)
    pixels = torch.zeros(len(images), 3, h, w)
    mask = torch.zeros(len(images), h, w, dtype=torch.long)
    for k, image in enumerate(images):
        pixels[k, :, : image.shape[1], : image.shape[2]] = image
        mask[k, : image.shape[1], : image.shape[2]] = 1
    return {"pixel_values": pixels, "pixel_mask": mask, "labels": [item[1] for item in batch]}


def build_model(kind: str, names: list[str]):
    from transformers import DetrConfig, DetrForObjectDetection

    extra = dict(d_model=128, encoder_ffn_dim=1024, decoder_ffn_dim=1024) if kind == "paper-small" else dict(
        backbone="resnet18", d_model=128, encoder_ffn_dim=512, decoder_ffn_dim=512, encoder_layers=3, decoder_layers=3)
    torch.manual_seed(0)
    return DetrForObjectDetection(DetrConfig(use_pretrained_backbone=False, id2label=dict(enumerate(names)), **extra))


def loader_rate(loader: DataLoader, batches: int) -> float:
    it = iter(loader)
    next(it)  # start workers
    start, images = time.perf_counter(), 0
    for _ in range(batches):
        try:
            images += len(next(it)["labels"])
        except StopIteration:
            it = iter(loader)
    return images / (time.perf_counter() - start)


def train_rate(model, processor, loader: DataLoader, steps: int) -> float:
    timer = StepTimer()
    trainer = L.Trainer(max_steps=steps + 2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, gradient_clip_val=0.1, limit_val_batches=0, accelerator="auto",
                        devices=1, callbacks=[timer])
    trainer.fit(DetectionModule(model, processor), loader)
    return timer.images / timer.seconds


class StepTimer(L.Callback):
    """Images and seconds of the steps after the first two (warm-up), data loading included."""

    def __init__(self) -> None:
        self.images, self.seconds, self.last = 0, 0.0, time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, idx) -> None:
        if trainer.global_step > 2:
            self.images += len(batch["labels"])
            self.seconds += time.perf_counter() - self.last
        self.last = time.perf_counter()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--model", choices=["paper-small", "tiny"], default="paper-small")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    from transformers import DetrImageProcessor, DetrImageProcessorPil

    size = {"shortest_edge": args.image_size, "longest_edge": args.image_size * 5 // 3}
    fast, slow = DetrImageProcessor(size=size), DetrImageProcessorPil(size=size)
    with tempfile.TemporaryDirectory() as tmp:
        root = write_dataset(Path(tmp) / "rocks", draw_rocks, NAMES, "rocks", train=40, valid=4, copies=3, size=416)
        data = open_dataset(root)
        ours, _ = make_loaders(data, fast, batch_size=4, workers=args.workers)
        plain, _ = make_loaders(data, fast, batch_size=4, workers=args.workers, augment=False)
        ours0, _ = make_loaders(data, fast, batch_size=4, workers=0)
        ref = DataLoader(ReferenceCoco(root / "train", slow), batch_size=4, shuffle=True, collate_fn=reference_collate)
        ref_fast = DataLoader(ReferenceCoco(root / "train", fast), batch_size=4, shuffle=True,
                              collate_fn=reference_collate)
        print(f"416 px images resized to {args.image_size} px, batch 4, {torch.get_num_threads()} threads")
        print("loader alone (images/s):")
        rates = {"ours": loader_rate(ours, 15), "ours, 0 workers": loader_rate(ours0, 15),
                 "reference (per-sample PIL processor)": loader_rate(ref, 15),
                 "reference with the torchvision processor": loader_rate(ref_fast, 15)}
        for name, rate in rates.items():
            print(f"  {name:42s} {rate:8.1f}")
        print(f"training, model {args.model} (images/s over {args.steps} steps after 2 warm-up steps, "
              f"best of {args.repeats}):")
        runs = {"ours, no augmentation (like the reference)": (fast, plain), "ours, flip + zoom augmentation": (fast, ours),
                "reference": (slow, ref)}
        best = dict.fromkeys(runs, 0.0)
        for _ in range(args.repeats):  # interleaved, best of each: the machine's noise hits all alike
            for name, (processor, loader) in runs.items():
                best[name] = max(best[name], train_rate(build_model(args.model, data.names), processor, loader, args.steps))
        for name, rate in best.items():
            print(f"  {name:42s} {rate:8.2f}")
        ours_rate, ref_rate = best["ours, no augmentation (like the reference)"], best["reference"]
        loader_ratio = rates["ours"] / rates["reference (per-sample PIL processor)"]
        print(f"ratio ours/reference: training {ours_rate / ref_rate:.2f}x (same work), loader {loader_ratio:.2f}x; "
              f"a training step takes {4 / ours_rate:.2f} s per batch of 4, loading it {4 / rates['ours']:.3f} s")


if __name__ == "__main__":
    main()
