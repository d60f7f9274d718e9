"""A half-precision source is calibrated in float32 one module at a time: the same model as a float32 copy."""

from __future__ import annotations

import pytest
import torch

from interprune import shrink
from interprune.precision import compute_in_float32, float32_copy

from .families import FAMILIES


def _bf16(family: str):
    config_cls, fields, model_cls, _, widths = FAMILIES[family]
    torch.manual_seed(0)
    return model_cls(config_cls(**fields)).eval().to(torch.bfloat16), widths[0]


def test_modules_compute_in_float32_and_keep_their_half_tensors():
    model, _ = _bf16("bert")
    ids = torch.randint(3, 100, (2, 7), generator=torch.Generator().manual_seed(1))
    reference = float32_copy(model)
    handles = compute_in_float32(model)
    try:
        with torch.no_grad():
            found, expected = model(input_ids=ids).last_hidden_state, reference(input_ids=ids).last_hidden_state
    finally:
        for handle in handles:
            handle.remove()
    assert found.dtype == torch.float32 and torch.equal(found, expected)  # the float32 model's function exactly
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())  # and no float32 tensor stays behind
    assert all(p.dtype == torch.float32 for p in reference.parameters())


@pytest.mark.parametrize("family,rotate", [("qwen2", True), ("bert", True), ("mixtral", False)])
def test_a_half_precision_source_shrinks_as_its_float32_copy_does(family, rotate):
    model, overrides = _bf16(family)
    ids = torch.randint(3, 100, (8, 12), generator=torch.Generator().manual_seed(2))
    options = dict(method="calibrated", rotate=rotate, compensate=True, calibration={"input_ids": ids},
                   calibration_batch=4, dtype=torch.bfloat16)
    half, half_report = shrink(model, overrides, **options)
    whole, whole_report = shrink(float32_copy(model), overrides, **options)
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())  # the caller's model is unchanged
    assert {k: torch.as_tensor(v).tolist() for k, v in half_report.choices.items()} == \
        {k: torch.as_tensor(v).tolist() for k, v in whole_report.choices.items()}
    assert half_report.preserved["compensated"] == whole_report.preserved["compensated"]
    for (name, a), (_, b) in zip(half.state_dict().items(), whole.state_dict().items()):
        assert a.dtype == b.dtype and torch.equal(a, b), name


def test_a_block_that_reads_a_childs_weight_directly_computes_on_float32_weights_instead():
    """Modules outside every stack stay float32 for the whole recipe (a detector's parent reads its query
    embeddings' weight directly); a block that does so is caught by a one-example probe, and the model is
    then converted whole, in place, and put back afterwards."""
    from torch import nn

    from interprune.weights.shrink import _in_float32

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.proj = nn.Linear(4, 4)

        def forward(self, x):
            return x @ self.proj.weight.T  # not self.proj(x): no hook of proj's runs

    class Toy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.queries = nn.Embedding(3, 4)
            self.layers = nn.ModuleList([Block(), Block()])

        def forward(self, x):
            x = x + self.queries.weight.sum(0)  # read directly, outside every stack
            for layer in self.layers:
                x = layer(x)
            return x

    model = Toy().to(torch.bfloat16)
    handles = _in_float32(model, {"x": torch.randn(2, 4)})
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert model(torch.randn(2, 4)).dtype == torch.float32
    for handle in handles:
        handle.remove()
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())


def test_the_float16_demo_source_shrinks_as_its_float32_copy_does():
    """The shipped detector is stored in float16: its data-aware shrink is the float32 copy's, bit for bit."""
    from interprune.demo import DEMO_SOURCE
    from interprune.hf.models import load_model

    from .engine_cases import demo_pixels

    model = load_model(DEMO_SOURCE)
    assert model.dtype == torch.float16
    options = dict(method="calibrated", rotate=True, compensate=True, calibration=demo_pixels(4), calibration_batch=2,
                   dtype=torch.float32)
    overrides = {"d_model": 64, "encoder_ffn_dim": 128, "decoder_ffn_dim": 128}
    half, _ = shrink(model, overrides, **options)
    whole, _ = shrink(float32_copy(model), overrides, **options)
    for (name, a), (_, b) in zip(half.state_dict().items(), whole.state_dict().items()):
        assert torch.equal(a, b), name


def test_modules_outside_every_stack_stay_half_unless_a_parent_reads_their_weight():
    """A decoder's embeddings and output layer convert their own tensors only while they run (in float32 for
    the whole recipe they were twice their half size); a table whose weight the model reads directly (and
    sums in half precision, which type promotion would not reveal) is caught by the probe and made float32
    for the whole recipe, so the function is the float32 copy's."""
    from torch import nn

    from interprune.weights.shrink import _in_float32

    model, _ = _bf16("qwen2")
    handles = _in_float32(model, {"input_ids": torch.randint(3, 100, (2, 7))})
    assert model.embed_tokens.weight.dtype == torch.bfloat16  # half between calls
    for handle in handles:
        handle.remove()

    class Tabled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.table, self.layers = nn.Embedding(5, 4), nn.ModuleList([nn.Linear(4, 4), nn.Linear(4, 4)])

        def forward(self, x):
            x = x + self.table.weight.cumsum(0)[-1]  # computed in the weight's own precision
            for layer in self.layers:
                x = layer(x)
            return x

    torch.manual_seed(0)
    toy, x = Tabled().to(torch.bfloat16), torch.randn(3, 4)
    expected = float32_copy(toy)(x)
    handles = _in_float32(toy, {"x": x})
    assert toy.table.weight.dtype == torch.float32 and toy.layers[0].weight.dtype == torch.bfloat16
    assert torch.equal(toy(x), expected)
    for handle in handles:
        handle.remove()
    assert toy.table.weight.dtype == torch.bfloat16


def test_a_copy_of_some_tensors_shares_every_other_one_and_widens_its_own():
    """``float32_copy(only=...)``: what the rotation changes is copied (float32), the rest is the model's own
    tensor; a tensor tied to a copied name is copied under every name."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 4), torch.nn.LayerNorm(4)).to(torch.bfloat16)
    model[2].weight = model[1].weight  # tied
    twin = float32_copy(model, only={"0.weight", "1.weight"})
    assert twin[0].bias is model[0].bias and twin[1].bias is model[1].bias and twin[2].bias is model[2].bias
    assert twin[0].weight is not model[0].weight and twin[0].weight.dtype == torch.float32
    assert twin[1].weight is twin[2].weight and twin[1].weight is not model[1].weight
    assert torch.equal(twin[0].weight, model[0].weight.float()) and twin[1].weight.dtype == torch.float32
    with torch.no_grad():
        twin[0].weight.mul_(2)
    assert torch.equal(model[0].weight.float() * 2, twin[0].weight)  # the model's own weight is untouched
    assert float32_copy(model)[0].bias.dtype == torch.float32  # without ``only``: all of it, in float32
