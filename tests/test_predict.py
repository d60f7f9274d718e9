"""``predict``: one detection per query with its best class, the cap said, pictures bounded in size."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from interprune.cli import main
from interprune.hf.models import load_for_inference
from interprune.predict import best_per_query, detect
from interprune.sources import SHIPPED

DEMO_SOURCE = SHIPPED["demo"]


def test_sigmoid_models_give_each_query_its_best_class_once():
    logits = torch.tensor([[0.0, 2.0, -1.0], [1.0, 0.5, 3.0]])  # 2 queries x 3 classes, independent sigmoids
    boxes = torch.tensor([[0.5, 0.5, 0.2, 0.4], [0.25, 0.75, 0.5, 0.5]])
    scores, labels, xyxy = best_per_query(logits, boxes, (100, 200), num_labels=3)
    assert labels.tolist() == [1, 2] and scores.tolist() == pytest.approx([torch.sigmoid(torch.tensor(2.0)).item(),
                                                                           torch.sigmoid(torch.tensor(3.0)).item()])
    assert torch.allclose(xyxy, torch.tensor([[80.0, 30, 120, 70], [0, 50, 100, 100]]))  # x by the width 200, y by 100


def test_softmax_models_drop_no_object_and_agree_with_the_processor(detector_dir):
    """DETR's own post-processing already keeps one class per query: ours is the same detections."""
    _, processor, detector = load_for_inference(detector_dir)
    image = torch.randint(0, 256, (3, 48, 80), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    ours = detect(processor, detector, image, threshold=0.0, top=None)
    inputs = processor(images=image, return_tensors="pt")
    with torch.no_grad():
        outputs = detector(**inputs)
    theirs = processor.post_process_object_detection(outputs, threshold=0.0, target_sizes=[(48, 80)])[0]
    order = theirs["scores"].argsort(descending=True)
    assert ours.found == len(ours.labels) == 10  # the tiny DETR's 10 queries
    assert torch.allclose(ours.scores, theirs["scores"][order]) and torch.equal(ours.labels, theirs["labels"][order])
    assert torch.allclose(ours.boxes, theirs["boxes"][order], atol=1e-4)


@pytest.fixture
def chess_photos(tmp_path):
    """2048 x 1371 photos, as in the chess-board export of issue 23."""
    folder = tmp_path / "photos"
    folder.mkdir()
    gen = torch.Generator().manual_seed(3)
    for index in range(2):
        pixels = torch.randint(0, 256, (1371 // 8, 2048 // 8, 3), dtype=torch.uint8, generator=gen)
        Image.fromarray(pixels.numpy()).resize((2048, 1371)).save(folder / f"board{index}.jpg")
    return folder


def test_a_sigmoid_model_draws_at_most_one_caption_per_box_and_says_when_the_cap_cuts(chess_photos, tmp_path, capsys):
    """The demo's source is a Conditional DETR (sigmoids, 20 queries, 10 classes): its processor's own top 100
    would stack up to 5 captions on each of its 20 boxes; one per query is at most 20, each box once."""
    _, processor, detector = load_for_inference(DEMO_SOURCE)
    image = torch.from_numpy(__import__("numpy").array(Image.open(chess_photos / "board0.jpg"))).permute(2, 0, 1)
    found = detect(processor, detector, image, threshold=0.0, top=None)
    assert found.found == len(found.labels) == 20
    assert len({tuple(box) for box in found.boxes.tolist()}) == 20  # 20 different boxes: one caption on each
    with torch.no_grad():
        outputs = detector(**processor(images=image, return_tensors="pt"))
    stock = processor.post_process_object_detection(outputs, threshold=0.0, target_sizes=[(1371, 2048)])[0]
    assert len(stock["labels"]) == 100 and len({tuple(b) for b in stock["boxes"].tolist()}) == 20  # the old picture
    assert main(["predict", "--model", str(DEMO_SOURCE), "--images", str(chess_photos), "--out",
                 str(tmp_path / "pred"), "--threshold", "0", "--top", "5"]) == 0
    printed = capsys.readouterr().out
    assert "board0.jpg: 5 detections (the best 5 of 20: --top 5)" in printed
    assert "10 detections on 2 images at score 0.0 or more, one per object query (at most 20 on one image); " \
           "--top 5 cut 2 images (30 detections not drawn)" in printed
    written = sorted((tmp_path / "pred").iterdir())
    assert [p.name for p in written] == ["board0.jpg", "board1.jpg"]
    assert Image.open(written[0]).format == "JPEG" and Image.open(written[0]).size == (1280, 857)  # --max-side 1280
    assert main(["predict", "--model", str(DEMO_SOURCE), "--images", str(chess_photos), "--out",
                 str(tmp_path / "full"), "--format", "png", "--max-side", "0", "--limit", "1"]) == 0
    full = Image.open(tmp_path / "full" / "board0.png")
    assert full.format == "PNG" and full.size == (2048, 1371)
    assert "board0.jpg: 20 detections" not in capsys.readouterr().out  # threshold 0.5: fewer, none cut
    assert main(["predict", "--model", str(DEMO_SOURCE), "--images", str(chess_photos), "--out",
                 str(tmp_path / "bad"), "--top", "0"]) == 2
    assert not (tmp_path / "bad").exists()
