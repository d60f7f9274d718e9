"""Parts the shrink leaves as they are are computed once per calibration example over the whole recipe."""

import torch
from torch import nn

from interprune.prefix import find_prefix
from interprune.walk import Batches, hooked_pass


class Scaled(nn.Module):
    """A part whose behaviour follows a setting that is not a tensor (as a config field would)."""

    def __init__(self, factor: float):
        super().__init__()
        self.gain, self.factor = nn.Parameter(torch.ones(8)), factor

    def forward(self, x):
        return x * self.gain * self.factor


class Counted(nn.Linear):
    """Counts its real computations (hooks would also count the replayed calls)."""

    runs = 0

    def forward(self, x):
        self.runs += 1
        return super().forward(x)


class Toy(nn.Module):
    def __init__(self, width: int, factor: float = 1.0):
        super().__init__()
        self.stem, self.scaled, self.head = Counted(4, 8), Scaled(factor), nn.Linear(8, width)

    @property
    def runs(self) -> int:
        return self.stem.runs

    def forward(self, x):
        return self.head(self.scaled(self.stem(x)))


def _pair(factor: float = 1.0) -> tuple[Toy, Toy]:
    torch.manual_seed(0)
    source, target = Toy(8), Toy(4, factor)  # the target's stem is not filled yet: the probe lends it the source's
    return source, target


def test_equal_parts_are_found_and_a_setting_that_changes_the_output_is_seen():
    batches = Batches.of({"x": torch.randn(3, 4)}, 1)
    source, target = _pair()
    assert find_prefix(source, target, batches).names == ["scaled", "stem"]
    source, target = _pair(factor=2.0)
    assert find_prefix(source, target, batches).names == ["stem"]


def test_every_pass_and_every_model_computes_a_shared_part_once_per_example():
    batches = Batches.of({"x": torch.randn(3, 4)}, 1)
    source, target = _pair()
    batches.shared = find_prefix(source, target, batches)
    source.stem.runs = target.stem.runs = 0
    outputs = []
    hooked_pass(source, batches, [(source.head, lambda m, a, o: outputs.append(o))])
    target.stem.load_state_dict(source.stem.state_dict())  # the transfer copies it
    target.scaled.load_state_dict(source.scaled.state_dict())
    hooked_pass(target, batches, [])
    hooked_pass(source, batches, [(source.head, lambda m, a, o: outputs.append(o))])
    assert (source.runs, target.runs) == (3, 0)
    assert all(torch.equal(a, b) for a, b in zip(outputs[:3], outputs[3:]))
    # a pass that looks inside a shared part computes it; a model whose part differs computes its own
    hooked_pass(source, batches, [(source.stem, lambda m, a, o: None)])
    assert source.runs == 6
    other = Toy(4)
    assert not batches.shared.applies(other)
    hooked_pass(other, batches, [])
    assert other.runs == 3


def test_the_demo_recipe_runs_the_backbone_once_per_image_and_gives_the_same_model(monkeypatch):
    """Rotation, scores and both compensation walks all read one backbone pass (plus the two one-example
    probes), and the model is bit for bit the one each pass computing its own backbone gives."""
    import interprune.preserve.recipe as recipe
    from interprune.prefix import Prefix
    from interprune.walk import Spill

    from .engine_cases import cases, demo_pixels, fingerprint

    source, overrides, options = cases()["demo-half"]
    images = []

    def count(module, args, output):
        if isinstance(module, nn.Conv2d) and module.in_channels == 3:
            if args[0].shape[-2:] == (160, 160):  # calibration images (the plan's own probe is smaller)
                images.append(args[0].shape[0])

    def shrunk(inputs=None):
        from interprune.hf.config import target_config
        from interprune.hf.models import build_model

        target = build_model(target_config(source.config, overrides), 0)
        handle = nn.modules.module.register_module_forward_hook(count)
        try:
            report, record = recipe.fill(source, target, "calibrated", inputs=inputs or demo_pixels(),
                                         compensate_layers=True, rotate=True, batch_size=2)
        finally:
            handle.remove()
        report.preserved = record.to_dict()
        return fingerprint(target, report)

    shared = shrunk()
    assert sum(images) == 6 + 2
    images.clear()

    # images processed a mini-batch at a time, when first needed, and freed once the backbone's outputs
    # for them are stored: the same model, the backbone still once per image
    from interprune.demo import DEMO_SOURCE
    from interprune.hf.processors import model_processor
    from interprune.preserve.calibration import calibration_batches

    from .engine_cases import demo_images

    made = []
    batches = calibration_batches(demo_images(), model_processor(DEMO_SOURCE), count=6, batch=2)
    make = batches.make
    batches.make = lambda i: made.append(i) or make(i)
    assert batches.made and len(batches) == 3
    assert shrunk(batches) == shared
    assert sum(images) == 6 + 2 and made == [0, 1, 2]  # each mini-batch processed once
    for i in range(3):  # the pixels and their mask are placeholders now: no memory
        thin = batches._thin[i]
        assert set(thin) == {"pixel_values", "pixel_mask"}
        assert all(v.stride() == (0,) * v.dim() for v in thin.values())
        assert thin["pixel_values"].shape == (2, 3, 160, 160)
    images.clear()

    monkeypatch.setattr(recipe, "find_prefix", lambda s, t, b, spill: Prefix(s, [], spill))
    alone = shrunk()
    assert sum(images) > 4 * 6
    assert shared == alone
