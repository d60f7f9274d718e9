"""Importance: weight-norm and activation scores, the choice they make, and which layers a shallower stack keeps."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from interprune.plan import make_plan
from interprune.preserve.importance import (activation_scores, choose, choose_layers, layer_influence, layer_name_map,
                                            magnitude_scores)

from .conftest import tiny_bert


def ffn_of_layer0(plan):
    return next(d for d in plan.dimensions if d.kind == "ffn" and ".0." in d.name)


def test_magnitude_score_is_the_sum_of_normalised_squared_norms_over_every_tensor_of_the_dimension():
    source, target = tiny_bert(), tiny_bert(intermediate_size=32)
    plan = make_plan(source, target)
    dim = ffn_of_layer0(plan)
    state = source.state_dict()
    up, down = state["encoder.layer.0.intermediate.dense.weight"], state["encoder.layer.0.output.dense.weight"]
    bias = state["encoder.layer.0.intermediate.dense.bias"]
    bias.copy_(torch.randn(64, generator=torch.Generator().manual_seed(1)))  # BERT starts its biases at zero
    expected = sum(n / n.mean() for n in (up.pow(2).sum(1), bias.pow(2), down.pow(2).sum(0)))
    assert torch.allclose(magnitude_scores(state, plan)[dim.name], expected, atol=1e-5)


def test_choose_keeps_the_highest_scores_in_source_order_and_breaks_ties_the_same_way():
    source, target = tiny_bert(), tiny_bert(intermediate_size=32)
    plan = make_plan(source, target)
    dim = ffn_of_layer0(plan)
    scores = {d.name: torch.zeros(d.source) for d in plan.dimensions}
    scores[dim.name] = torch.arange(64.0).flip(0)  # unit 0 scores highest
    assert choose(plan, scores)[dim.name].tolist() == list(range(32))
    scores[dim.name] = torch.ones(64)  # all tied: the stable sort keeps the first ones
    assert choose(plan, scores)[dim.name].tolist() == list(range(32))


def test_activation_scores_prefer_units_that_fire():
    source, target = tiny_bert(), tiny_bert(intermediate_size=32)
    dead = torch.arange(0, 64, 2)  # make every even FFN unit of layer 0 silent
    with torch.no_grad():
        source.encoder.layer[0].intermediate.dense.weight[dead] = 0
        source.encoder.layer[0].intermediate.dense.bias[dead] = 0  # written as 0, read as GELU(0) = 0
    plan = make_plan(source, target)
    dim = ffn_of_layer0(plan)
    inputs = {"input_ids": torch.randint(0, 50, (4, 12), generator=torch.Generator().manual_seed(0))}
    kept = choose(plan, activation_scores(source, plan, inputs))[dim.name]
    assert kept.tolist() == list(range(1, 64, 2))  # exactly the units that fire


@pytest.mark.parametrize("how, influence, kept", [
    ("first", None, [0, 1, 2]), ("uniform", None, [0, 2, 4]),
    ("importance", torch.tensor([0.1, 0.5, 0.3, 0.9, 0.0, 0.4]), [1, 3, 5]),
])
def test_choose_layers(how, influence, kept):
    assert choose_layers(how, 6, 3, influence).tolist() == kept


def test_choose_layers_refuses_what_it_cannot_do():
    with pytest.raises(ValueError, match="needs calibration data"):
        choose_layers("importance", 6, 3)
    with pytest.raises(ValueError, match="unknown layer choice 'last'"):
        choose_layers("last", 6, 3)


def test_layer_name_map_points_target_layers_at_the_source_layers_they_came_from():
    rename = layer_name_map({"encoder.layer": torch.tensor([0, 2])})
    assert rename("encoder.layer.1.attention.self.query.weight") == "encoder.layer.2.attention.self.query.weight"
    assert rename("encoder.layer.1") == "encoder.layer.2"
    assert rename("encoder.layer.0.output.dense.bias") == "encoder.layer.0.output.dense.bias"
    assert rename("encoder.layers_extra.1.weight") == "encoder.layers_extra.1.weight"  # another stack
    assert rename("embeddings.word_embeddings.weight") == "embeddings.word_embeddings.weight"


class Stack(nn.Module):
    """Two layers: one that leaves the hidden state alone, one that turns it around."""

    def __init__(self) -> None:
        super().__init__()
        flip = nn.Linear(4, 4, bias=False)
        nn.init.constant_(flip.weight, 0.0)
        with torch.no_grad():
            flip.weight.copy_(-torch.eye(4))
        self.layers = nn.ModuleList([nn.Identity(), flip])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


def test_layer_influence_is_one_minus_the_cosine_of_input_and_output():
    influence = layer_influence(Stack(), "layers", {"x": torch.randn(3, 5, 4)})
    assert torch.allclose(influence, torch.tensor([0.0, 2.0]), atol=1e-6)


@pytest.mark.parametrize("family", ["mixtral", "qwen2_moe"])
def test_an_moe_residual_is_scored_on_its_own_axes_not_an_experts_units(family):
    """Every expert's down projection writes the residual stream as well as reading its FFN units: only the
    FFN dimensions take the routed-token expert scores (the residual once got an expert's 64 FFN scores
    for its 32 channels, and a calibrated hidden-size cut of any MoE model failed)."""
    from interprune import shrink
    from interprune.preserve.importance import activation_scores
    from interprune.weights.shrink import plan_for

    from .families import FAMILIES

    config_cls, fields, model_cls, _, widths = FAMILIES[family]
    torch.manual_seed(0)
    model = model_cls(config_cls(**fields)).eval()
    inputs = {"input_ids": torch.randint(3, 100, (8, 12), generator=torch.Generator().manual_seed(2))}
    plan = plan_for(model, widths[0])
    scores = activation_scores(model, plan, inputs)
    assert all(scores[d.name].shape == (d.source,) for d in plan.dimensions if d.name in scores)
    small, report = shrink(model, widths[0], "calibrated", calibration=inputs)
    assert sorted(report.choices["residual"]) == list(report.choices["residual"])
    assert len(report.choices["residual"]) == small.config.hidden_size
    assert max(report.choices["residual"]) < model.config.hidden_size


def test_the_scoring_pass_stops_after_its_last_hooked_call_and_loses_nothing():
    """After the first mini-batch, a forward stops at the last call a score reads: a language model's output
    layer is scored by its input, so its 30,000-wide logits were computed for nothing. The scores are those
    of one whole batch (where nothing stops), and the float32 squares summed in float64 match float64 ones."""
    from interprune.preserve.importance import _square_sums
    from interprune.walk import Batches
    from interprune.weights.shrink import plan_for

    from .families import FAMILIES

    from transformers import Qwen2ForCausalLM

    config_cls, fields, _, _, widths = FAMILIES["qwen2"]
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config_cls(**fields)).eval()
    inputs = {"input_ids": torch.randint(3, 100, (9, 12), generator=torch.Generator().manual_seed(2))}
    plan = plan_for(model, widths[0])
    whole = activation_scores(model, plan, inputs)
    runs = []
    handle = model.lm_head.register_forward_hook(lambda m, a, o: runs.append(o.shape[0]))
    try:
        parts = activation_scores(model, plan, Batches.of(inputs, 3))
    finally:
        handle.remove()
    assert runs == [3]  # the first mini-batch ran whole, the two others stopped before the output layer
    assert whole.keys() == parts.keys()
    for name in whole:
        assert torch.allclose(parts[name], whole[name], rtol=1e-5, atol=0), name
    rows = torch.randn(1000, 7) * 100
    assert torch.allclose(_square_sums(rows), rows.double().pow(2).sum(0), rtol=1e-6, atol=0)
    assert torch.allclose(_square_sums(rows.half()), rows.half().double().pow(2).sum(0), rtol=1e-6, atol=0)
