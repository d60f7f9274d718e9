import json
import shutil

import pytest
import torch
from PIL import Image
from torchvision import tv_tensors
from transformers import DetrImageProcessor

from interprune import InterpruneError
from interprune.cli import main
from interprune.data import DetectionDataset, make_loaders, open_dataset
from interprune.data.augment import ZoomCrop, augmentation
from interprune.data.rocks import NAMES, draw_rocks
from interprune.data.show import dataset_grid
from interprune.data.synthetic import write_dataset


def write_coco(folder, categories, annotations, images=2, size=(80, 60), name="_annotations.coco.json"):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(images):
        Image.new("RGB", size, (i * 40, 90, 120)).save(folder / f"im{i}.jpg")
    coco = {"images": [{"id": i, "file_name": f"im{i}.jpg", "width": size[0], "height": size[1]} for i in range(images)],
            "annotations": [{"id": k, "image_id": im, "category_id": c, "bbox": b} for k, (im, c, b) in enumerate(annotations)],
            "categories": categories}
    (folder / name).write_text(json.dumps(coco))
    return folder / name


ROBOFLOW_CATS = [{"id": 0, "name": "rocks", "supercategory": "none"},
                 {"id": 1, "name": "coal", "supercategory": "rocks"}, {"id": 2, "name": "gold", "supercategory": "rocks"}]


@pytest.fixture
def roboflow(tmp_path):
    write_coco(tmp_path / "ds" / "train", ROBOFLOW_CATS, [(0, 1, [10, 10, 20, 20]), (1, 2, [5, 5, 30, 40])], images=3)
    write_coco(tmp_path / "ds" / "valid", ROBOFLOW_CATS, [(0, 2, [1, 1, 10, 10])], images=1)
    return tmp_path / "ds"


def test_roboflow_layout_drops_the_empty_supercategory(roboflow):
    data = open_dataset(roboflow)
    assert data.names == ["coal", "gold"] and data.id2label == {0: "coal", 1: "gold"}
    assert len(data.train) == 3 and len(data.valid) == 1
    assert data.train.boxes[0] == [(0, [10.0, 10.0, 20.0, 20.0])] and data.train.boxes[2] == []  # no boxes is fine


def test_sparse_ids_map_to_contiguous_labels_and_one_split_is_divided(tmp_path):
    cats = [{"id": 17, "name": "b"}, {"id": 3, "name": "a"}, {"id": 40, "name": "c"}]
    path = write_coco(tmp_path / "plain", cats, [(i % 10, [3, 17, 40][i % 3], [2, 2, 9, 9]) for i in range(20)],
                      images=10, name="instances.json")
    data = open_dataset(path, seed=1)
    assert data.names == ["a", "b", "c"]
    assert len(data.train) == 8 and len(data.valid) == 2 and "held out 2 of 10" in data.notes[0]
    assert {im["id"] for im in data.valid.images} == {im["id"] for im in open_dataset(path, seed=1).valid.images}
    assert {im["id"] for im in data.valid.images} != {im["id"] for im in open_dataset(path, seed=5).valid.images}
    labels = {label for boxes in data.train.boxes.values() for label, _ in boxes}
    assert labels <= {0, 1, 2}


def test_slightly_outside_boxes_are_clipped_and_counted(tmp_path):
    path = write_coco(tmp_path / "c", ROBOFLOW_CATS, [(0, 1, [-3, 50, 20, 14]), (1, 1, [70, 2, 12, 8])])
    data = open_dataset(path)
    assert data.clipped == 2 and "clipped 2 boxes" in data.notes[-1]
    all_boxes = [b for bs in {**data.train.boxes, **data.valid.boxes}.values() for _, b in bs]
    assert sorted(all_boxes) == [[0.0, 50.0, 17.0, 10.0], [70.0, 2.0, 10.0, 8.0]]


@pytest.mark.parametrize("annotation,message", [
    ((5, 1, [1, 1, 5, 5]), "annotation id 0 points to unknown image id 5"),
    ((0, 9, [1, 1, 5, 5]), "annotation id 0 has unknown category id 9"),
    ((0, 1, [1, 1, 0, 5]), "annotation id 0 has a box of non-positive size"),
    ((0, 1, [60, 1, 50, 5]), "annotation id 0 has box .* far outside"),
    ((0, 1, "oops"), "annotation id 0 has no valid 'bbox'"),
])
def test_bad_annotations_name_the_file_and_annotation(tmp_path, annotation, message):
    path = write_coco(tmp_path / "bad", ROBOFLOW_CATS, [annotation])
    with pytest.raises(InterpruneError, match=message) as err:
        open_dataset(path)
    assert str(path) in str(err.value)


def test_missing_image_and_malformed_json(tmp_path):
    path = write_coco(tmp_path / "m", ROBOFLOW_CATS, [])
    (tmp_path / "m" / "im1.jpg").unlink()
    with pytest.raises(InterpruneError, match=r"im1.jpg: image missing \(image id 1"):
        open_dataset(path)
    path.write_text("{not json")
    with pytest.raises(InterpruneError, match="malformed JSON"):
        open_dataset(path)
    with pytest.raises(InterpruneError, match="no train/_annotations.coco.json"):
        open_dataset(tmp_path)


def test_rocks_generator_is_deterministic_and_sized_like_the_paper(tmp_path):
    a = write_dataset(tmp_path / "a", draw_rocks, NAMES, "rocks", train=4, valid=2, copies=3, size=96, seed=3)
    b = write_dataset(tmp_path / "b", draw_rocks, NAMES, "rocks", train=4, valid=2, copies=3, size=96, seed=3)
    c = write_dataset(tmp_path / "c", draw_rocks, NAMES, "rocks", train=4, valid=2, copies=3, size=96, seed=4)
    ja, jb, jc = ((p / "train" / "_annotations.coco.json").read_text() for p in (a, b, c))
    assert ja == jb and ja != jc
    assert (a / "train" / "rocks_0002_1.jpg").read_bytes() == (b / "train" / "rocks_0002_1.jpg").read_bytes()
    data = open_dataset(a)
    assert (len(data.train), len(data.valid), data.names) == (12, 2, NAMES)
    assert data.train.num_boxes() > 0
    with pytest.raises(InterpruneError, match="already exists"):
        write_dataset(a, draw_rocks, NAMES, "rocks", train=1, valid=1)


def test_rocks_are_big_and_show_their_ore_colour():
    """A rock fills a good part of the image and most boxes are mostly covered by their own ore's colour, more
    than by any other ore's: the classes are told apart by what a detector at stride 16 can see."""
    import numpy as np

    from interprune.data.rocks import ORES

    colours = np.asarray([ORES[n][0] for n in NAMES], np.float32)
    rng, sides, own_wins, boxes_seen = np.random.default_rng(0), [], 0, 0
    for _ in range(30):
        image, boxes = draw_rocks(rng, 160)
        pixels = np.asarray(image, np.float32)
        for label, (x, y, w, h) in boxes:
            sides.append(max(w, h))
            crop = pixels[int(y): int(y + h), int(x): int(x + w)].reshape(-1, 1, 3)
            near = (np.linalg.norm(crop - colours[None], axis=-1) < 50).mean(0)  # share of each ore's colour
            near[NAMES.index("coal")] *= label == NAMES.index("coal")  # shadows and rims are as dark as coal
            own_wins += int(near.argmax() == label and near[label] > 0.08)
            boxes_seen += 1
    assert np.median(sides) >= 0.25 * 160 and min(sides) >= 4  # the old rocks: about 0.15
    assert own_wins >= 0.85 * boxes_seen, (own_wins, boxes_seen)


def test_augmentation_keeps_every_box_valid():
    torch.manual_seed(0)
    image = tv_tensors.Image(torch.randint(0, 255, (3, 60, 80), dtype=torch.uint8))
    boxes = tv_tensors.BoundingBoxes(torch.tensor([[0, 0, 30, 20], [60, 40, 20, 20], [10, 30, 5, 5]]), format="XYWH",
                                     canvas_size=(60, 80))
    transform = augmentation()
    for _ in range(200):
        out, target = transform(image, {"boxes": boxes, "labels": torch.tensor([0, 1, 2])})
        b = target["boxes"]
        assert out.shape == image.shape and len(b) == len(target["labels"])
        assert (b[:, 2:] >= 3).all() and (b[:, 0] >= 0).all() and (b[:, 1] >= 0).all()
        assert (b[:, 0] + b[:, 2] <= 80.001).all() and (b[:, 1] + b[:, 3] <= 60.001).all()


def test_flip_mirrors_boxes_and_zoom_enlarges_them():
    image = tv_tensors.Image(torch.zeros(3, 50, 100, dtype=torch.uint8))
    box = tv_tensors.BoundingBoxes(torch.tensor([[10.0, 5.0, 20.0, 10.0]]), format="XYWH", canvas_size=(50, 100))
    _, flipped = augmentation(flip=1.0, zoom=0.0)(image, {"boxes": box, "labels": torch.tensor([0])})
    assert flipped["boxes"].tolist() == [[70.0, 5.0, 20.0, 10.0]]
    torch.manual_seed(1)
    _, zoomed = ZoomCrop(0.2)(image, {"boxes": box})
    assert 1.0 <= zoomed["boxes"][0, 2] / 20 <= 1.21


def test_batches_match_the_image_processor(roboflow):
    processor = DetrImageProcessor(size={"shortest_edge": 64, "longest_edge": 96})
    data = open_dataset(roboflow)
    train, valid = make_loaders(data, processor, batch_size=2, augment=False)
    batch = next(iter(valid))
    assert set(batch) == {"pixel_values", "pixel_mask", "labels"}
    assert batch["pixel_values"].shape == (1, 3, 64, 85) and batch["pixel_mask"].shape == (1, 64, 85)
    image = Image.open(data.valid.images[0]["file"])
    ref = processor(images=image, annotations={"image_id": 0, "annotations": [
        {"bbox": [1, 1, 10, 10], "category_id": 1, "area": 100, "iscrowd": 0}]}, return_tensors="pt")
    assert torch.allclose(batch["labels"][0]["boxes"], ref["labels"][0]["boxes"])
    assert torch.allclose(batch["pixel_values"], ref["pixel_values"], atol=0.05)
    batches = list(train)
    assert [len(b["labels"]) for b in batches] == [2, 1]
    for b in batches:
        for labels in b["labels"]:
            assert labels["class_labels"].dtype == torch.long
            assert ((labels["boxes"] > 0) & (labels["boxes"] <= 1)).all()


def test_copies_repeat_each_training_image(roboflow):
    data = open_dataset(roboflow)
    assert len(DetectionDataset(data.train, augmentation(), copies=3)) == 9


def test_cli_generates_and_shows(tmp_path, capsys):
    assert main(["data", "shapes", "--out", str(tmp_path / "s"), "--train", "3", "--valid", "2", "--size", "64"]) == 0
    assert main(["data", "show", str(tmp_path / "s"), "--out", str(tmp_path / "g.png"), "--count", "5", "--augment"]) == 0
    printed = capsys.readouterr().out
    assert "10 classes" in printed and "3 train / 2 valid images" in printed
    assert Image.open(tmp_path / "g.png").size == (3 * 260 + 4, 260 + 4)  # 3 tiles of 256 px + 4 px padding
    assert main(["data", "show", str(tmp_path / "s"), "--out", str(tmp_path / "t.png"), "--split", "test"]) == 2


def test_dataset_grid_draws_boxes(roboflow, tmp_path):
    out = dataset_grid(open_dataset(roboflow), tmp_path / "grid.png", count=2)
    pixels = torch.tensor(list(Image.open(out).getdata()))
    assert len(torch.unique(pixels, dim=0)) > 3  # background, padding, and box colours


def test_exif_orientation_is_honoured_in_the_check_and_the_loader(tmp_path):
    """A phone photo stored landscape with EXIF orientation 6 (turn 90 degrees clockwise) is shown, and
    annotated, as portrait: its boxes are in the portrait frame, and the loader must give that frame."""
    folder = tmp_path / "exif" / "train"
    folder.mkdir(parents=True)
    stored = Image.new("RGB", (80, 40), (0, 0, 255))
    stored.paste((255, 0, 0), (0, 0, 10, 40))  # the stored left edge is red: it is the top once turned
    exif = Image.Exif()
    exif[0x0112] = 6
    stored.save(folder / "photo.jpg", exif=exif, quality=95)
    coco = {"images": [{"id": 0, "file_name": "photo.jpg", "width": 40, "height": 80}],
            "annotations": [{"id": 0, "image_id": 0, "category_id": 1, "bbox": [5, 50, 30, 25]}],  # fits 40x80 only
            "categories": [{"id": 1, "name": "thing"}]}
    (folder / "_annotations.coco.json").write_text(json.dumps(coco))
    (folder.parent / "valid").mkdir()
    shutil.copy(folder / "photo.jpg", folder.parent / "valid")
    (folder.parent / "valid" / "_annotations.coco.json").write_text(json.dumps(coco))
    data = open_dataset(folder.parent)
    assert (data.train.images[0]["width"], data.train.images[0]["height"]) == (40, 80)
    assert data.clipped == 0
    image, target = DetectionDataset(data.train)[0]
    assert image.shape == (3, 80, 40)
    assert image[0, :5].float().mean() > 200 and image[2, :5].float().mean() < 60  # red on top
    assert image[2, -5:].float().mean() > 200  # blue at the bottom
    assert target["annotations"][0]["bbox"] == [5.0, 50.0, 30.0, 25.0]


def test_images_that_do_not_decode_are_named_when_the_dataset_is_opened(roboflow):
    jpeg = roboflow / "train" / "im1.jpg"
    jpeg.write_bytes(jpeg.read_bytes()[: len(jpeg.read_bytes()) // 2])  # cut short, as by a failed copy
    with pytest.raises(InterpruneError, match=r"im1.jpg: image unreadable: .* \(image id 1 in .*; re-export or delete it"):
        open_dataset(roboflow)
    Image.new("RGB", (80, 60), (1, 2, 3)).save(jpeg.with_suffix(".bmp"))
    jpeg.unlink()
    jpeg.with_suffix(".bmp").rename(jpeg)  # a BMP under a .jpg name: PIL reads it, and so does the loader now
    data = open_dataset(roboflow)
    image, _ = DetectionDataset(data.train)[1]
    assert image.shape == (3, 60, 80) and image[:, 0, 0].tolist() == [1, 2, 3]


def test_a_validation_split_without_images_is_an_error(roboflow):
    coco = json.loads((roboflow / "valid" / "_annotations.coco.json").read_text())
    coco["images"], coco["annotations"] = [], []
    (roboflow / "valid" / "_annotations.coco.json").write_text(json.dumps(coco))
    with pytest.raises(InterpruneError, match=r"valid/_annotations.coco.json: the validation split has no images"):
        open_dataset(roboflow)
def test_captions_scale_with_the_image_and_sit_on_a_filled_label():
    from interprune.data.show import PALETTE, draw_boxes, label_style

    assert label_style(160, 160) == (1, 10) and label_style(1371, 2048) == (7, 49)

    def label_rows(side):
        image = torch.zeros(3, side, side, dtype=torch.uint8)
        box = torch.tensor([[side * 0.2, side * 0.5, side * 0.6, side * 0.9]])
        drawn = draw_boxes(image, box, [0], ["coal"])
        column = drawn[:, : int(side * 0.5), int(side * 0.2)].T  # the pixels above the box's left edge
        red = torch.tensor([230, 25, 75], dtype=torch.uint8)  # PALETTE[0], the label's background
        assert PALETTE[0] == "#e6194b"
        return int((column == red).all(dim=1).sum())

    small, large = label_rows(200), label_rows(2000)
    assert small >= 10 and large >= 6 * small  # the label (background and all) grows with the image
