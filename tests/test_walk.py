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
    assert not any(n.endswith(".norm") for n in walker.stores)  # computed again from its input: cheaper than stored
    assert set(walker.skipped) == {"embed", "layers.0", "layers.1", "layers.2"}
    walker.close()


class Table(nn.Module):
    """A rotary table: its first input is the embeddings, of which it reads only the shape."""

    def forward(self, h):
        return torch.linspace(1.0, 2.0, h.shape[-1])


class ScaledBlock(Block):
    def forward(self, x, scale):
        return x + self.lin(self.norm(x)) * scale


class TableStack(Stack):
    def __init__(self):
        super().__init__()
        self.table, self.layers = Table(), nn.ModuleList(ScaledBlock(8) for _ in range(6))

    def forward(self, x):
        h = self.embed(x)
        scale = self.table(h)
        for layer in self.layers:
            h = layer(h, scale)
        return self.head(h)


def test_the_embeddings_are_skipped_once_the_first_block_is_done():
    """The embeddings feed a rotary-like table and the first block: a verdict taken while the first block still
    read them said "never skip them" (kept for their role), and they stayed stored for the whole walk."""
    torch.manual_seed(0)
    walker = Walker(TableStack(), Batches.of({"x": torch.randn(8, 5, 4)}, 2))
    walker.trace()
    for k in range(6):
        _walk_to(walker, f"layers.{k}.lin")
    assert {"embed", "layers.0", "layers.1", "layers.2"} <= set(walker.skipped)
    assert "embed" not in walker.stores
    walker.close()


def test_a_block_recorded_whole_keeps_none_of_its_parts():
    """A pass that records a block as a whole (the source's last stage of a block) stores none of the block's
    parts: later passes replay the block itself, and the parts cost a boundary each per example."""
    torch.manual_seed(0)
    model = Stack()
    for layer in model.layers:
        layer.norm = nn.Sequential(nn.LayerNorm(8), nn.Linear(8, 8))  # a part worth storing, unlike a norm
    x = torch.randn(4, 5, 4)
    for whole in (None, "layers.2"):
        walker = Walker(model, Batches.of({"x": x}, 2))
        walker.trace()
        _walk_to(walker, "layers.2.norm")
        walker.prepare(walker.enter("layers.2.lin", 0))  # the block's first part is done: a pass would store it
        record = walker.recorder("layers.2")

        def done(module, args, kwargs, output, i=None):
            raise Stop
        for i in range(2):
            walker.run(i, [("layers.2", 0, "post", lambda m, a, k, o, i=i: (record(i, o), done(m, a, k, o)))],
                       whole=whole)
        assert ("layers.2.norm" in walker.stores) == (whole is None)
        with torch.no_grad():
            h = model.layers[1](model.layers[0](model.embed(x[2:])))
            assert torch.allclose(walker.stores["layers.2"].get(1), model.layers[2](h))
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
