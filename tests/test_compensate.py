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


def test_conv_patches_make_a_kxk_convolution_one_matrix_product():
    from interprune.preserve.compensate import conv_patches

    conv = torch.nn.Conv2d(3, 5, 3, stride=2, padding=1, bias=False).double()
    x = torch.randn(2, 3, 9, 7, dtype=torch.float64)
    rows = conv_patches(x, conv) @ conv.weight.reshape(5, -1).T
    assert torch.allclose(rows, conv(x).movedim(1, -1).reshape(-1, 5))


def test_a_kxk_strided_convolution_is_refit_to_its_source():
    """A 3x3 stride-2 convolution whose weights were lost is recovered by least squares over input patches."""
    from interprune.preserve.compensate import compensate

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(4, 6, 3, stride=2, padding=1)

        def forward(self, pixel_values):
            return self.conv(pixel_values)

    torch.manual_seed(0)
    source, target = Net().eval(), Net().eval()
    inputs = {"pixel_values": torch.randn(8, 4, 12, 12)}
    done = compensate(source, target, inputs, lambda name: None, layers=["conv"], ridge=1e-9)
    assert done.layers == ["conv"]
    assert torch.allclose(target.conv.weight, source.conv.weight, atol=1e-4)
    assert torch.allclose(target(**inputs), source(**inputs), atol=1e-4)


def test_an_output_layer_wider_than_its_input_is_refit_through_the_source_inputs(monkeypatch):
    """A vocabulary's output layer is refit from the source layer's *inputs*, lifted through its weights
    (``X^T Y = (X^T X_s) W^T``): the same model as recording its outputs, at a fraction of the cost."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    import importlib

    from interprune import shrink

    module = importlib.import_module("interprune.preserve.compensate")  # the package exports a function of that name

    torch.manual_seed(0)
    config = Qwen2Config(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=300, max_position_embeddings=32, tie_word_embeddings=False)
    model = Qwen2ForCausalLM(config).eval()
    ids = torch.randint(0, 300, (8, 12), generator=torch.Generator().manual_seed(3))
    options = dict(method="calibrated", compensate=True, calibration={"input_ids": ids}, calibration_batch=3)
    overrides = {"hidden_size": 16, "intermediate_size": 32}
    lifted, original = [], module._through

    def spy(target, counterpart, index, scale):
        found = original(target, counterpart, index, scale)
        lifted.append(found is not None)
        if found is not None:  # every word kept: the source's weights themselves, not a float64 copy (250 MB at 30k words)
            assert index is None and found.data_ptr() == counterpart.weight.data_ptr() and found.dtype == torch.float32
        return found

    monkeypatch.setattr(module, "_through", spy)
    through, report = shrink(model, overrides, **options)
    assert type(through) is Qwen2ForCausalLM  # a model built in memory keeps its class (and its output layer)
    assert sum(lifted) == 1 and "lm_head" in report.preserved["compensated"]  # only the output layer
    monkeypatch.setattr(module, "_through", lambda *args: None)
    direct, direct_report = shrink(model, overrides, **options)
    assert report.preserved["strengths"] == direct_report.preserved["strengths"]
    assert report.preserved["held_out"] == pytest.approx(direct_report.preserved["held_out"], rel=1e-6, abs=1e-9)
    for (name, a), (_, b) in zip(through.state_dict().items(), direct.state_dict().items()):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6), name


def _source_runs(budget: int | None = None) -> tuple[dict[tuple[int, str], int], dict, object]:
    """Compensate a half-width 3-layer Qwen2 from the same source (the module's switches as the caller set
    them): how often each source block's attention and FFN started, the refit target's weights, the report."""
    import importlib

    from transformers import Qwen2Config, Qwen2Model

    from interprune.plan import make_plan, output_index
    from interprune.walk import Batches
    from interprune.weights.transfer import transfer as copy_weights

    module = importlib.import_module("interprune.preserve.compensate")
    torch.manual_seed(0)
    common = dict(num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2, vocab_size=60,
                  max_position_embeddings=32)
    source = Qwen2Model(Qwen2Config(hidden_size=32, intermediate_size=64, **common)).eval()
    ids = torch.randint(0, 60, (6, 10), generator=torch.Generator().manual_seed(1))
    target = Qwen2Model(Qwen2Config(hidden_size=16, intermediate_size=32, **common)).eval()
    report = copy_weights(source, target, "select")
    choices = {name: torch.as_tensor(index) for name, index in report.choices.items()}
    plan, state = make_plan(source, target), source.state_dict()
    kept = lambda name: output_index(plan, f"{name}.weight", state[f"{name}.weight"].shape[0], choices) \
        if f"{name}.weight" in state else None  # noqa: E731
    runs: dict[tuple[int, str], int] = {(i, part): 0 for i in range(3) for part in ("self_attn", "mlp")}
    handles = [getattr(layer, part).register_forward_pre_hook(
        lambda m, a, key=(i, part): runs.__setitem__(key, runs[key] + 1))
        for i, layer in enumerate(source.layers) for part in ("self_attn", "mlp")]
    try:
        done = module.compensate(source, target, Batches.of({"input_ids": ids}, 2), kept, ridge=1e-2, budget=budget)
    finally:
        for handle in handles:
            handle.remove()
    return runs, target.state_dict(), done


def test_the_source_computes_each_blocks_ffn_once_per_example_in_compensation(monkeypatch):
    """The source's pass at the last stage of a block goes on to the block's end and records its output,
    so the next block's first stage replays it: each FFN of the source runs once less per mini-batch (it ran
    once for its down projection's stage and once more to record the block for the next one), and the
    model is the same."""
    import importlib

    module = importlib.import_module("interprune.preserve.compensate")
    runs, model, done = _source_runs()
    assert "layers.2.mlp.down_proj" in done.layers
    monkeypatch.setattr(module, "_closing_block", lambda *args: None)
    before, same, done = _source_runs()
    assert "layers.2.mlp.down_proj" in done.layers
    # 3 mini-batches; the last block is not read again (a start is counted, stopped inside or not)
    assert {i: before[(i, "mlp")] - runs[(i, "mlp")] for i in range(3)} == {0: 3, 1: 3, 2: 0}
    assert all(torch.allclose(a, b, rtol=1e-5, atol=1e-7) for a, b in zip(model.values(), same.values()))


def test_a_source_pass_captures_the_next_stage_of_its_block_on_the_way(monkeypatch):
    """The source's weights never change, so a stage's source pass goes on to the next stage's layers when they
    lie further on in the same block, keeps their outputs, and the next stage runs no source at all: a decoder's
    source computed each block's attention three times per mini-batch and its FFN twice. The model is bit for
    bit the same."""
    import importlib

    module = importlib.import_module("interprune.preserve.compensate")
    ahead, model, done = _source_runs()
    assert len(done.layers) == 3 * 7 and not done.skipped  # q, k, v, o, gate, up, down of every block
    on_disk = _source_runs(budget=100)[1]  # the captures kept for the next stage go to disk past the memory budget
    assert all(torch.equal(a, b) for a, b in zip(model.values(), on_disk.values()))
    monkeypatch.setattr(module, "LOOK_AHEAD", False)
    before, same, done = _source_runs()
    assert len(done.layers) == 3 * 7 and not done.skipped
    # 3 mini-batches: two attention runs and one FFN run fewer per block and mini-batch
    assert {key: before[key] - ahead[key] for key in before} == {
        (i, part): 6 if part == "self_attn" else 3 for i in range(3) for part in ("self_attn", "mlp")}
    assert all(torch.equal(a, b) for a, b in zip(model.values(), same.values()))


def test_compensation_stores_a_few_boundaries_of_activations(monkeypatch):
    """What the walk stores at once, counted in boundaries (examples x tokens x the source's width, float32) on a
    three-block decoder: the stored parts of the current block and the boundaries before it. The source's pass
    that records a block whole stores none of its parts, the embeddings are skipped once the first block is
    done (a rotary table reads them too), norms and a block's linear maps are computed again rather than
    stored, and the source outputs captured for the next stage keep only the columns it keeps; together these
    took the peak from 10.9 boundaries to 3.9."""
    from interprune import walk

    peak = [0]
    keep = walk.Spill.keep

    def tracked(self, value):
        item = keep(self, value)
        peak[0] = max(peak[0], self.used)
        return item

    monkeypatch.setattr(walk.Spill, "keep", tracked)
    _source_runs()
    assert peak[0] / (6 * 10 * 32 * 4) <= 4.0


def test_layers_reading_one_input_share_their_statistics_through_the_engine(monkeypatch):
    """In a real walk, queries, keys and values (and gate and up) are captured as one tensor, so they are one
    group: one ``X^T X`` per mini-batch for each shared input (and, when the strength is chosen, one
    decomposition). A fresh capture per layer made each layer its own group: seven products per decoder block
    and mini-batch, not four. The model is bit for bit the one of separate groups."""
    import importlib

    module = importlib.import_module("interprune.preserve.compensate")
    groups: list[int] = []
    moments = module.group_moments

    def counted(x, ys, lifted, held):
        groups.append(len(ys))
        return moments(x, ys, lifted, held)

    monkeypatch.setattr(module, "group_moments", counted)
    _, shared, done = _source_runs()
    assert len(done.layers) == 3 * 7 and not done.skipped
    # 3 blocks x 3 mini-batches: q|k|v, o, gate|up, down
    assert sorted(groups) == [1] * 18 + [2] * 9 + [3] * 9
    original = module._capture

    def apart(walker, calls, i, until=None):  # each layer's input an object of its own, as before
        return {key: value.clone() for key, value in original(walker, calls, i, until).items()}

    monkeypatch.setattr(module, "_capture", apart)
    groups.clear()
    _, separate, _ = _source_runs()
    assert groups == [1] * (3 * 3 * 7)
    assert all(torch.equal(a, b) for a, b in zip(shared.values(), separate.values()))
