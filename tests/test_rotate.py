"""Head rotation: the same function, the energy moved into the leading channels of every head."""

from __future__ import annotations

import torch

from interprune.plan import make_plan
from interprune.preserve.rotate import query_key_axes, rotate_heads

from .conftest import tiny_bert


def plans():
    source, target = tiny_bert(), tiny_bert(hidden_size=16, intermediate_size=64)  # head width 8 -> 4
    return source, make_plan(source, target)


def test_query_and_key_axes_apart_from_value_and_output_axes():
    _, plan = plans()
    dim = next(d for d in plan.dimensions if d.kind == "head_dim" and ".0." in d.name)
    qk, vo = query_key_axes(dim)
    assert {a.tensor.split(".")[-2] for a in qk} == {"query", "key"}
    assert {a.tensor.split(".")[-2] for a in vo} == {"value", "dense"}
    assert all(a.axis == 1 for a in vo if "dense" in a.tensor)  # the output projection reads the heads


def test_rotation_keeps_the_function_and_sorts_each_heads_value_energy():
    source, plan = plans()
    inputs = {"input_ids": torch.randint(0, 50, (4, 12), generator=torch.Generator().manual_seed(0))}
    rotated, choices = rotate_heads(source, plan, inputs)
    assert len(choices) == 3 and all(c.tolist() == [0, 1, 2, 3] for c in choices.values())
    with torch.no_grad():
        a, b = source(**inputs).last_hidden_state, rotated(**inputs).last_hidden_state
    assert torch.allclose(a, b, atol=1e-5)
    energy = {}

    def record(module, args, out):
        energy["v"] = out.detach().pow(2).sum((0, 1))

    rotated.encoder.layer[0].attention.self.value.register_forward_hook(record)
    with torch.no_grad():
        rotated(**inputs)
    for head in energy["v"].reshape(4, 8):  # principal directions: energy falls channel by channel
        assert torch.all(head[:-1] >= head[1:] - 1e-6)


def test_nothing_rotates_when_no_head_narrows():
    source, target = tiny_bert(), tiny_bert(intermediate_size=32)
    rotated, choices = rotate_heads(source, make_plan(source, target), {"input_ids": torch.ones(1, 4, dtype=torch.long)})
    assert choices == {} and all(torch.equal(v, rotated.state_dict()[k]) for k, v in source.state_dict().items())
