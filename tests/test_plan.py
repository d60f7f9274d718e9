"""The dimension plan and the structure-aware transfer: one test per way the per-tensor shrink went wrong."""

from __future__ import annotations

import pytest
import torch

from interprune.plan import Grid, default_choices, make_plan
from interprune.weights.resample import select_indices
from interprune.weights.transfer import transfer

from .families import FAMILIES


def build(family: str, **changes):
    config_cls, fields, model_cls, *_ = FAMILIES[family]
    torch.manual_seed(0)
    return model_cls(config_cls(**{**fields, **changes})).eval()


def test_gpt2_fused_c_attn_keeps_the_same_units_for_q_k_and_v():
    source, target = build("gpt2", n_embd=64), build("gpt2", n_embd=48)
    report = transfer(source, target, "select")
    width = torch.tensor(report.choices["h.0.attn.head_dim"])  # 16 -> 12 inside each of the 4 heads
    assert width.tolist() == select_indices(16, 12).tolist()
    src, dst = source.state_dict(), target.state_dict()
    rows = torch.tensor(report.choices["residual"])
    cols = torch.cat([h * 16 + width for h in range(4)])  # one head-space choice ...
    fused = torch.cat([p * 64 + cols for p in range(3)])  # ... applied to q, k and v alike
    assert torch.equal(dst["h.0.attn.c_attn.weight"], src["h.0.attn.c_attn.weight"][rows][:, fused])
    assert torch.equal(dst["h.0.attn.c_attn.bias"], src["h.0.attn.c_attn.bias"][fused])
    assert torch.equal(dst["h.0.attn.c_proj.weight"], src["h.0.attn.c_proj.weight"][cols][:, rows])


def test_fewer_key_value_heads_keep_a_whole_head_and_its_query_heads():
    source, target = build("llama", num_attention_heads=4, num_key_value_heads=2), build(
        "llama", num_attention_heads=2, num_key_value_heads=1, head_dim=8)
    report = transfer(source, target, "first")
    assert report.choices["layers.0.self_attn.kv_heads"] == [0]
    assert report.choices["layers.0.self_attn.heads"] == [0, 1]  # the query heads that used kv head 0
    src, dst = source.state_dict(), target.state_dict()
    assert torch.equal(dst["layers.0.self_attn.k_proj.weight"], src["layers.0.self_attn.k_proj.weight"][:8])
    assert torch.equal(dst["layers.0.self_attn.q_proj.weight"], src["layers.0.self_attn.q_proj.weight"][:16])
    fewer_queries = build("llama", num_attention_heads=2, head_dim=8)  # 2 kv heads kept: one query head each
    assert transfer(source, fewer_queries, "first").choices["layers.0.self_attn.heads"] == [0, 2]
    only_kv = build("llama", num_key_value_heads=1)
    transfer(source, only_kv, "select")
    assert torch.equal(only_kv.state_dict()["layers.1.self_attn.v_proj.weight"],
                       src["layers.1.self_attn.v_proj.weight"][:8])  # one whole head, not halves of two


@pytest.mark.parametrize("method", ["select", "area", "nearest-exact"])
def test_vit_position_grid_is_resized_as_a_grid_with_cls_kept(method):
    source, target = build("vit", image_size=32), build("vit", image_size=16)
    plan = make_plan(source, target)
    assert plan["position_grid"].grid == Grid(source=(4, 4), target=(2, 2), before=1, after=0, relative=False)
    transfer(source, target, method, plan=plan)
    src = source.state_dict()["embeddings.position_embeddings"][0]
    dst = target.state_dict()["embeddings.position_embeddings"][0]
    assert torch.equal(dst[0], src[0])  # CLS untouched, never averaged into patches
    grid = src[1:].reshape(4, 4, -1)
    if method == "select":
        expected = grid[::2, ::2]  # rows 0, 2 and columns 0, 2: a grid, not a column
    else:
        expected = torch.nn.functional.interpolate(grid.permute(2, 0, 1)[None], size=(2, 2), mode=method)[0]
        expected = expected.permute(1, 2, 0)
    assert torch.allclose(dst[1:].reshape(2, 2, -1), expected, atol=1e-6)


def test_swin_relative_position_table_keeps_its_central_offsets_as_a_2d_table():
    source, target = build("swin", window_size=4), build("swin", window_size=2)
    transfer(source, target, "select")
    name = "encoder.layers.0.blocks.0.attention.relative_position_bias.relative_position_bias_table"
    src = source.state_dict()[name].reshape(7, 7, -1)  # offsets -3..3 in each direction
    dst = target.state_dict()[name].reshape(3, 3, -1)  # offsets -1..1
    assert torch.equal(dst, src[2:5, 2:5])


@pytest.mark.parametrize("method", ["select", "area"])
def test_bert_positions_and_vocabulary_keep_their_ids(method):
    source, target = build("bert"), build("bert", max_position_embeddings=32, vocab_size=50)
    transfer(source, target, method)
    src, dst = source.state_dict(), target.state_dict()
    for name, rows in (("embeddings.position_embeddings.weight", 32), ("embeddings.word_embeddings.weight", 50)):
        assert torch.equal(dst[name], src[name][:rows])  # position i keeps position i's embedding, token 3 token 3's
    grown = build("bert", max_position_embeddings=128)
    fresh = grown.state_dict()["embeddings.position_embeddings.weight"].clone()
    transfer(source, grown, method)
    table = grown.state_dict()["embeddings.position_embeddings.weight"]
    assert torch.equal(table[:64], src["embeddings.position_embeddings.weight"]) and torch.equal(table[64:], fresh[64:])


@pytest.mark.parametrize("family", ["detr", "conditional_detr", "deformable_detr"])
def test_detr_family_sine_embedding_agrees_on_the_kept_residual_channels(family):
    width = FAMILIES[family][1]["d_model"]
    source, target = build(family), build(family, d_model=width // 2)
    report = transfer(source, target, "select")
    kept = torch.tensor(report.choices["residual"])
    assert kept.tolist()[:4] == [0, 1, 4, 5] and kept[width // 4] == width // 2  # 4j, 4j+1 in each half
    shape = torch.Size([1, 3, 5, 7])
    big = source.model.position_embedding(shape, "cpu", torch.float32)
    small = target.model.position_embedding(shape, "cpu", torch.float32)
    assert torch.allclose(small, big[:, kept], atol=1e-6)
    uniform = select_indices(width, width // 2)
    assert not torch.allclose(small, big[:, uniform], atol=1e-3)  # what uniform selection would have lost


def test_layers_take_chosen_source_layers_and_unknown_structure_is_said():
    source, target = build("bert"), build("bert", num_hidden_layers=1)
    plan = make_plan(source, target)
    assert plan["encoder.layer"].kind == "layers" and (plan["encoder.layer"].source, plan["encoder.layer"].target) == (2, 1)
    report = transfer(source, target, "select", plan=plan, choices={"encoder.layer": torch.tensor([1])})
    name = "encoder.layer.0.output.dense.weight"
    assert torch.equal(target.state_dict()[name], source.state_dict()["encoder.layer.1.output.dense.weight"])
    assert "encoder.layer.0.output.dense.weight" in report.dropped
    yolos, shallow = build("yolos"), build("yolos", num_hidden_layers=1)
    assert make_plan(yolos, shallow).unplanned == ["vit.encoder.interpolation.mid_position_embeddings"]  # said
    for method in ("select", "max-pool", "nearest-exact"):  # was a traceback: 0-row mid_position_embeddings
        transfer(yolos, shallow, method)


def test_one_choice_reaches_every_axis_of_a_dimension():
    source, target = build("bert"), build("bert", hidden_size=16, intermediate_size=32)
    plan = make_plan(source, target)
    residual = plan["residual"]
    names = {a.tensor for a in residual.axes}
    assert {"embeddings.word_embeddings.weight", "encoder.layer.1.output.LayerNorm.weight",
            "encoder.layer.0.attention.self.query.weight", "pooler.dense.weight"} <= names
    ffn = plan["encoder.layer.0.ffn"]
    assert {(a.tensor, a.axis) for a in ffn.axes} == {("encoder.layer.0.intermediate.dense.weight", 0),
                                                     ("encoder.layer.0.intermediate.dense.bias", 0),
                                                     ("encoder.layer.0.output.dense.weight", 1)}
    keep = torch.tensor([31, 0, 5, 7, 9, 2, 3, 4, 10, 11, 12, 13, 14, 15, 16, 17])  # an importance method's pick
    transfer(source, target, "select", plan=plan, choices={"residual": keep})
    src, dst = source.state_dict(), target.state_dict()
    assert torch.equal(dst["embeddings.LayerNorm.weight"], src["embeddings.LayerNorm.weight"][keep])
    assert torch.equal(dst["encoder.layer.1.output.dense.weight"][:, :5],
                       src["encoder.layer.1.output.dense.weight"][keep][:, select_indices(64, 32)[:5]])
    assert set(default_choices(plan, "first")) == {d.name for d in plan.dimensions}


def test_rt_detr_sine_embedding_agrees_on_the_kept_encoder_channels():
    source, target = build("rt_detr"), build("rt_detr", encoder_hidden_dim=8)
    report = transfer(source, target, "first")
    kept = torch.tensor(report.choices["channels.16"])
    assert kept.tolist() == [0, 2, 4, 6, 8, 10, 12, 14]  # blocks [sin_h, cos_h, sin_w, cos_w] of 4 -> 2
    big = source.model.encoder.aifi[0].position_embedding(3, 5, torch.device("cpu"), torch.float32)
    small = target.model.encoder.aifi[0].position_embedding(3, 5, torch.device("cpu"), torch.float32)
    assert torch.allclose(small, big[..., kept], atol=1e-6)


def test_rotary_frequencies_agree_on_the_kept_head_channels():
    source, target = build("llama"), build("llama", hidden_size=16, head_dim=4, intermediate_size=32)
    report = transfer(source, target, "first")
    kept = torch.tensor(report.choices["layers.0.self_attn.head_dim"])
    assert kept.tolist() == [0, 2, 4, 6]  # pairs (i, i + d/2) at the nearest frequencies, not the first 4
    x, positions = torch.zeros(1, 5, 4), torch.arange(5)[None]
    cos_big, sin_big = source.rotary_emb(x, positions)
    cos_small, sin_small = target.rotary_emb(x, positions)
    assert torch.allclose(cos_small, cos_big[..., kept]) and torch.allclose(sin_small, sin_big[..., kept])


def test_frozen_sinusoids_keep_the_targets_own_values():
    source, target = build("whisper"), build("whisper", d_model=16, encoder_ffn_dim=32, decoder_ffn_dim=32)
    own = target.state_dict()["encoder.embed_positions.weight"].clone()
    report = transfer(source, target, "select")
    assert torch.equal(target.state_dict()["encoder.embed_positions.weight"], own)  # sinusoids of width 16
    assert {r.name: r.action for r in report.tensors}["encoder.embed_positions.weight"] == "initialised"


def test_yolos_detection_tokens_and_clip_class_token_are_kept_around_their_grids():
    source, target = build("yolos"), build("yolos", image_size=[16, 16])
    transfer(source, target, "area")
    src = source.state_dict()["vit.embeddings.position_embeddings"][0]
    dst = target.state_dict()["vit.embeddings.position_embeddings"][0]
    assert dst.shape[0] == 1 + 4 + 5 and torch.equal(dst[0], src[0]) and torch.equal(dst[-5:], src[-5:])
    clip, small = build("clip"), build("clip", vision_config={**FAMILIES["clip"][1]["vision_config"], "image_size": 16})
    plan = make_plan(clip, small)
    grid = plan["vision_model.position_grid"]
    assert grid.grid.before == 1 and [a.tensor for a in grid.axes] == ["vision_model.embeddings.position_embedding.weight"]
