"""The sequential engine's bookkeeping (``walk.Walker``): what it stores, skips and copies.

The oracle of the results is ``test_engine.py`` (same model as the one-batch implementation); these tests
pin the two properties that make it cheap: two boundaries stored, not one per block, and copies only of
outputs the model changes in place."""

import torch
from torch import nn

from interprune.walk import Batches, Stop, Walker


class Block(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.norm, self.lin = nn.LayerNorm(width), nn.Linear(width, width)

    def forward(self, x):
        return x + self.lin(self.norm(x))  # the residual is read again after the block's parts


class Stack(nn.Module):
    def __init__(self, width: int = 8, depth: int = 6):
        super().__init__()
        self.embed = nn.Linear(4, width)
        self.layers = nn.ModuleList(Block(width) for _ in range(depth))
        self.head = nn.Linear(width, 3)

    def forward(self, x):
        h = self.embed(x)
        for layer in self.layers:
            h = layer(h)
        out = self.head(h)
        out += 1.0  # changed in place after the head returned it, as DETR's box head output is
        return out


def _walk_to(walker: Walker, name: str) -> None:
    """Run every mini-batch up to ``name``'s call, as a compensation stage does (recording stores)."""
    walker.prepare(walker.enter(name, 0))

    def stop(module, args, kwargs):
        raise Stop

    for i in range(len(walker.batches)):
        walker.run(i, [(name, 0, "pre", stop)])


def test_two_boundaries_stay_stored_and_earlier_blocks_are_skipped():
    torch.manual_seed(0)
    model = Stack()
    walker = Walker(model, Batches.of({"x": torch.randn(8, 5, 4)}, 2))
    walker.trace()
    for k in range(6):
        _walk_to(walker, f"layers.{k}.lin")
    # the block just finished (recorded in this pass) and the one it is computed from, whatever the depth
    assert {n for n in walker.stores if n.count(".") <= 1} == {"layers.3", "layers.4"}
    assert set(walker.skipped) == {"embed", "layers.0", "layers.1", "layers.2"}
    walker.close()


def test_only_outputs_changed_in_place_are_copied():
    torch.manual_seed(0)
    model = Stack()
    walker = Walker(model, Batches.of({"x": torch.randn(4, 5, 4)}, 2))
    walker.trace()
    assert walker.written == {"head"}  # the embedding's freed output, its memory reused and written, is not
    _walk_to(walker, "layers.5.lin")
    assert walker.stores["layers.4"].copy is False
    walker.close()


class TwoScales(nn.Module):
    """A backbone that returns a large map nobody reads and a small one the head uses, as DETR's does."""

    def __init__(self):
        super().__init__()
        self.fine, self.coarse = nn.Linear(4, 64), nn.Linear(4, 8)

    def forward(self, x):
        return self.fine(x), self.coarse(x)


class Detector(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone, self.proj, self.head = TwoScales(), nn.Linear(8, 8), nn.Linear(8, 3)

    def forward(self, x):
        _, coarse = self.backbone(x)
        return self.head(self.proj(coarse))


def test_outputs_nothing_reads_are_not_stored():
    torch.manual_seed(0)
    model = Detector()
    x = torch.randn(4, 5, 4)
    walker = Walker(model, Batches.of({"x": x}, 2))
    walker.trace()
    assert walker.unread["backbone"] == frozenset({0}) and walker.unread["proj"] == frozenset()
    seen = []

    def grab(module, args, kwargs):
        seen.append(args[0].clone())
        raise Stop
    walker.prepare(walker.enter("head", 0))
    for i in range(2):
        walker.run(i, [("head", 0, "pre", grab)])
    fine, coarse = walker.stores["backbone"].items[0][1]
    assert fine.stride() == (0, 0, 0) and coarse.stride() != (0, 0, 0)  # the unread map takes no memory
    walker.run(1, [("head", 0, "pre", grab)])  # replayed from the store: the head sees what the model gives it
    with torch.no_grad():
        assert torch.allclose(seen[-1], model.proj(model.backbone.coarse(x[2:])))
    walker.close()
