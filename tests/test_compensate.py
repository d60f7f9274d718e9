import pytest
import torch
from torch import nn

from interprune.preserve.compensate import compensate, layer_errors
from interprune.weights.resample import select_indices
from interprune.weights.transfer import transfer

from .conftest import tiny_bert


@pytest.fixture
def pair():
    """A source BERT and its FFN-halved copy filled by uniform selection, plus calibration tokens."""
    source = tiny_bert(num_hidden_layers=2)
    target = tiny_bert(num_hidden_layers=2, intermediate_size=24)
    transfer(source, target, "select")
    ids = torch.randint(0, 50, (24, 12), generator=torch.Generator().manual_seed(3))
    return source, target, {"input_ids": ids}


def kept_ffn(name: str):
    return select_indices(64, 24) if name.endswith("intermediate.dense") else None


def test_compensation_reduces_every_refit_layers_output_error(pair):
    source, target, inputs = pair
    names = [f"encoder.layer.{i}.{part}" for i in range(2) for part in ("intermediate.dense", "output.dense")]
    before = layer_errors(source, target, inputs, names, kept_ffn)
    report = compensate(source, target, inputs, kept_ffn, ridge=1e-4)
    after = layer_errors(source, target, inputs, names, kept_ffn)
    assert report.layers == names  # forward order, only the resized layers
    assert report.rows == 24 * 12  # every token of every example
    for i in range(2):  # the FFN output that lost 40 of 64 units: a large error, mostly repaired
        name = f"encoder.layer.{i}.output.dense"
        assert before[name] > 0.3
        assert after[name] < 0.5 * before[name], (name, before[name], after[name])
    # the kept units' pre-activations are already exact in the first layer; the refit keeps them so
    assert after["encoder.layer.0.intermediate.dense"] < 1e-3
    selected = tiny_bert(num_hidden_layers=2, intermediate_size=24)
    transfer(source, selected, "select")
    with torch.no_grad():
        out = source(**inputs).last_hidden_state
        err_before = (selected(**inputs).last_hidden_state - out).norm()
        err_after = (target(**inputs).last_hidden_state - out).norm()
    assert err_after < 0.6 * err_before, (float(err_before), float(err_after))


def test_refit_of_an_exactly_representable_layer_is_exact():
    """A linear layer whose target is a linear function of its input is recovered to rounding."""
    torch.manual_seed(0)

    class Two(nn.Module):
        def __init__(self, width: int) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(3, width), nn.Linear(width, 5)

        def forward(self, x):
            return self.b(self.a(x))

    source, target = Two(8), Two(4)
    x = torch.randn(200, 3)
    compensate(source, target, {"x": x}, lambda n: torch.tensor([0, 2, 4, 6]) if n == "a" else None, ridge=0.0)
    with torch.no_grad():
        assert torch.allclose(target.a(x), source.a(x)[:, [0, 2, 4, 6]], atol=1e-4)
        assert torch.allclose(target(x), source(x), atol=1e-3)  # 4 kept outputs of a rank-3 map determine the input, so b absorbs the dropped half exactly


def test_layer_norm_refit_corrects_statistics_of_fewer_channels():
    """Normalising over the 4 kept channels instead of all 8 changes mean and variance; the refit gain
    and shift undo most of that."""
    torch.manual_seed(0)

    class Norm(nn.Module):
        def __init__(self, width: int) -> None:
            super().__init__()
            self.a, self.norm = nn.Linear(3, width), nn.LayerNorm(width)

        def forward(self, x):
            return self.norm(self.a(x))

    source, target = Norm(8), Norm(4)
    with torch.no_grad():
        source.a.bias.copy_(torch.linspace(-2, 2, 8))
        source.norm.weight.copy_(torch.linspace(0.5, 2, 8))
    keep = torch.tensor([0, 1, 2, 7])
    target.load_state_dict({k: v[keep] for k, v in source.state_dict().items()})
    x = torch.randn(500, 3)
    before = float((target(x) - source(x)[:, keep]).norm() / source(x)[:, keep].norm())
    compensate(source, target, {"x": x}, lambda n: keep)
    after = float((target(x) - source(x)[:, keep]).norm() / source(x)[:, keep].norm())
    assert before > 0.25 and after < 0.75 * before, (before, after)  # measured 0.31 -> 0.21
