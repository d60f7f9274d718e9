"""Read COCO-format detection datasets (Roboflow exports and plain COCO) and check them up front.

Everything that could fail at step 2,000 (a missing image, a box pointing nowhere) fails here, when
the dataset is opened, with the file and annotation id in the message.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageOps

from ..errors import InterpruneError

__all__ = ["CocoSplit", "DetectionData", "open_dataset", "check_image", "read_image", "ROBOFLOW_JSON"]

ROBOFLOW_JSON = "_annotations.coco.json"
FAR_OUTSIDE = 0.25  # a box sticking out by more than this fraction of the image is an error, less is clipped


@dataclass
class CocoSplit:
    """One split: images (id, file path, size) and their boxes as (label, [x, y, w, h]) in pixels."""

    root: Path
    images: list[dict]
    boxes: dict[int, list[tuple[int, list[float]]]]

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, ids: list[int]) -> "CocoSplit":
        keep = set(ids)
        return CocoSplit(self.root, [im for im in self.images if im["id"] in keep],
                         {i: b for i, b in self.boxes.items() if i in keep})

    def num_boxes(self) -> int:
        return sum(len(b) for b in self.boxes.values())


@dataclass
class DetectionData:
    """A dataset ready for training: splits, contiguous class names, and what was repaired on the way."""

    train: CocoSplit
    valid: CocoSplit
    names: list[str]
    test: CocoSplit | None = None
    clipped: int = 0  # boxes that stuck out of their image a little and were clipped
    source: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def id2label(self) -> dict[int, str]:
        return dict(enumerate(self.names))


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise InterpruneError(f"{path}: annotations file not found; check --data") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InterpruneError(f"{path}: malformed JSON ({err}); re-export the dataset") from None
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise InterpruneError(f"{path}: not COCO detection JSON (no '{key}' list)")
    return data


def _category_map(jsons: list[dict]) -> tuple[dict[int, int], list[str]]:
    """Map (possibly sparse, 0- or 1-based) category ids to 0..K-1, dropping box-less super-categories.

    Roboflow adds a category (id 0) named after the dataset that every real class lists as its
    supercategory and that holds no boxes; a model should not spend a class on it.
    """
    names: dict[int, str] = {}
    used: set[int] = set()
    supers: set[str] = set()
    for data in jsons:
        for cat in data["categories"]:
            names[int(cat["id"])] = str(cat["name"])
            if cat.get("supercategory") not in (None, "", "none", cat["name"]):
                supers.add(str(cat["supercategory"]))
        used |= {int(a["category_id"]) for a in data["annotations"] if "category_id" in a}
    keep = sorted(i for i, n in names.items() if i in used or n not in supers)
    return {cid: label for label, cid in enumerate(keep)}, [names[i] for i in keep]


EXIF_ORIENTATION = 0x0112
TRANSPOSED = {5, 6, 7, 8}  # EXIF orientations that turn the stored image by 90 degrees


def check_image(file: Path, where: str) -> tuple[int, int]:
    """Decode ``file`` as the loader will (PIL) and return its size as displayed (EXIF orientation applied).

    Opening only reads the header, so a truncated file or one PIL cannot decode would pass; decoding it
    here, JPEGs at 1/8 scale (the DCT scaling of libjpeg: every byte is still read), finds them now.
    """
    try:
        with Image.open(file) as img:
            width, height = img.size
            turned = img.getexif().get(EXIF_ORIENTATION) in TRANSPOSED
            if img.format == "JPEG":
                img.draft("RGB", (max(1, width // 8), max(1, height // 8)))
            img.load()
    except FileNotFoundError:
        raise InterpruneError(f"{file}: image missing ({where})") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise InterpruneError(f"{file}: image unreadable: {reason} ({where}); re-export or delete it") from None
    return (height, width) if turned else (width, height)


def read_image(file: Path) -> Image.Image:
    """An RGB image as annotation tools show it: the EXIF orientation is applied to the pixels."""
    with Image.open(file) as img:
        return ImageOps.exif_transpose(img).convert("RGB")


def _read_split(path: Path, image_dir: Path, cats: dict[int, int]) -> tuple[CocoSplit, int]:
    data = _read_json(path)
    images, sizes = [], {}
    for im in data["images"]:
        file = image_dir / im["file_name"]
        width, height = check_image(file, f"image id {im.get('id')} in {path}")
        images.append({"id": int(im["id"]), "file": file, "width": width, "height": height})
        sizes[int(im["id"])] = (width, height)
    boxes: dict[int, list[tuple[int, list[float]]]] = {i: [] for i in sizes}
    clipped = 0
    for ann in data["annotations"]:
        where = f"{path}: annotation id {ann.get('id')}"
        image_id, cat = ann.get("image_id"), ann.get("category_id")
        if image_id not in sizes:
            raise InterpruneError(f"{where} points to unknown image id {image_id}")
        if cat not in cats:  # dropped super-categories hold no boxes, so this is an unknown id
            raise InterpruneError(f"{where} has unknown category id {cat}")
        try:
            x, y, w, h = (float(v) for v in ann["bbox"])
        except (KeyError, TypeError, ValueError):
            raise InterpruneError(f"{where} has no valid 'bbox' [x, y, width, height]") from None
        width, height = sizes[image_id]
        if w <= 0 or h <= 0:
            raise InterpruneError(f"{where} has a box of non-positive size {w} x {h}; fix or delete it")
        x0, y0, x1, y1 = max(x, 0.0), max(y, 0.0), min(x + w, width), min(y + h, height)
        out_x, out_y = (x - x0) + (x + w - x1), (y - y0) + (y + h - y1)
        if x1 <= x0 or y1 <= y0 or abs(out_x) > FAR_OUTSIDE * width or abs(out_y) > FAR_OUTSIDE * height:
            raise InterpruneError(f"{where} has box {[x, y, w, h]} far outside its {width}x{height} image")
        if (x0, y0, x1, y1) != (x, y, x + w, y + h):
            clipped += 1
        boxes[image_id].append((cats[cat], [x0, y0, x1 - x0, y1 - y0]))
    return CocoSplit(image_dir, images, boxes), clipped


def _split(split: CocoSplit, fraction: float, seed: int) -> tuple[CocoSplit, CocoSplit]:
    ids = sorted(im["id"] for im in split.images)
    random.Random(seed).shuffle(ids)
    n_valid = max(1, round(len(ids) * fraction))
    return split.subset(ids[n_valid:]), split.subset(ids[:n_valid])


def open_dataset(
    data: str | Path,
    *,
    images: str | Path | None = None,
    valid_fraction: float = 0.2,
    seed: int = 0,
) -> DetectionData:
    """Open a Roboflow export folder (``train/``, ``valid/``, optional ``test/``) or one COCO JSON file.

    For one JSON file (a plain COCO layout) ``images`` is the image folder (default: the JSON's folder).
    With only one split, a seeded ``valid_fraction`` of its images becomes the validation split.
    """
    data = Path(data)
    if data.is_dir():
        files = {s: data / s / ROBOFLOW_JSON for s in ("train", "valid", "test") if (data / s / ROBOFLOW_JSON).is_file()}
        if "train" not in files:
            raise InterpruneError(
                f"{data}: no train/{ROBOFLOW_JSON}; give a Roboflow COCO export folder, or the annotations JSON "
                f"file of a plain COCO dataset with --images pointing to its image folder"
            )
        folders = {s: f.parent for s, f in files.items()}
    elif data.is_file():
        files, folders = {"train": data}, {"train": Path(images) if images else data.parent}
    else:
        raise InterpruneError(f"{data}: no such dataset folder or annotations file; check --data")
    jsons = [_read_json(f) for f in files.values()]
    cats, names = _category_map(jsons)
    splits, clipped = {}, 0
    for split, file in files.items():
        splits[split], n = _read_split(file, folders[split], cats)
        clipped += n
    train, valid = splits["train"], splits.get("valid")
    notes = []
    if valid is None:
        train, valid = _split(train, valid_fraction, seed)
        notes.append(f"no validation split: held out {len(valid)} of {len(train) + len(valid)} images (seed {seed})")
    if len(train) == 0:
        raise InterpruneError(f"{data}: the training split has no images")
    if len(valid) == 0:
        raise InterpruneError(f"{files.get('valid', data)}: the validation split has no images; add some, or remove "
                              f"the valid/ folder and a seeded {valid_fraction:.0%} of the training images is held out")
    if clipped:
        notes.append(f"clipped {clipped} boxes that stuck out of their image")
    return DetectionData(train, valid, names, splits.get("test"), clipped, str(data), notes)
