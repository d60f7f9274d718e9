"""Exact oracles of a shrink, for every family of the matrix (issue 15).

* FFN-only cut: the small model equals the source with the dropped units' readers zeroed, for ``first``,
  ``magnitude`` and ``select`` at factors 2 and 5/6 (the choice each method made, applied to every axis);
* head cut (families whose head width is its own config key): the same with the dropped heads' output
  projection columns zeroed;
* a fused family equals its unfused twin given the same weights (Phi3 and Llama).
"""

from __future__ import annotations

import pytest
import torch

from interprune import shrink
from interprune.plan import Kind
from interprune.hf.inputs import dummy_inputs
from interprune.weights.shrink import plan_for

from .families import FAMILIES
from .oracles import max_error, outputs, perturbed, random_inputs, zero_dropped

# config keys of each family's FFN widths: integer widths, or ("ratio", key) for an mlp ratio
FFN = {
    **{f: ("intermediate_size",) for f in ("bert", "roberta", "vit", "deit", "yolos", "llama", "qwen2", "qwen3",
                                           "mistral", "gemma2", "gemma3_text", "phi3", "mixtral", "gpt_neox",
                                           "modernbert", "electra", "beit", "dpt", "wav2vec2")},
    "distilbert": ("hidden_dim",), "t5": ("d_ff",), "opt": ("ffn_dim",), "falcon": ("ffn_hidden_size",),
    "gpt2": ("n_inner",), "dinov2": ("mlp_ratio",), "swin": ("mlp_ratio",), "swinv2": ("mlp_ratio",),
    "mobilevit": ("mlp_ratio",),
    **{f: ("encoder_ffn_dim", "decoder_ffn_dim") for f in ("whisper", "detr", "conditional_detr", "table_transformer",
                                                           "deformable_detr", "rt_detr", "dab_detr", "d_fine")},
    "clip": ("text_config.intermediate_size", "vision_config.intermediate_size"),
    "siglip": ("text_config.intermediate_size", "vision_config.intermediate_size"),
    "qwen2_moe": ("moe_intermediate_size", "shared_expert_intermediate_size"),
}
# families left out, and why
NO_FFN_ORACLE = {
    "convnext": "its FFN width is 4x the stage width, not a config key",
    "convnextv2": "its FFN width is fixed, and its GRN normalises over the FFN units (a dropped unit is not a zero)",
    "resnet": "no FFN", "bloom": "its FFN width is 4x the hidden size, not a config key",
    "mamba": "no FFN: its inner width feeds a state-space scan", "segformer": "mlp_ratios feed a depthwise conv",
}
HEADS = {f: {"num_attention_heads": 2, "head_dim": 8} for f in ("llama", "qwen3", "mistral", "gemma2", "gemma3_text",
                                                               "mixtral")}
HEADS["t5"] = {"num_heads": 2}
FACTORS = (1 / 2, 5 / 6)
METHODS = ("first", "magnitude", "select")


def source(family: str):
    config_cls, fields, model_cls, *_ = FAMILIES[family]
    torch.manual_seed(0)
    return perturbed(model_cls(config_cls(**fields)).eval())


def ffn_overrides(model, family: str, factor: float) -> dict:
    out = {}
    for key in FFN[family]:
        config = model.config
        for part in key.split(".")[:-1]:
            config = getattr(config, part)
        leaf = key.split(".")[-1]
        value = getattr(config, leaf)
        if value is None:  # derived (GPT-2's n_inner, Falcon's ffn_hidden_size): 4x the width
            value = 4 * config.hidden_size
        align = 4 if family in ("mixtral", "qwen2_moe") else 1  # grouped expert matmuls want 16-byte rows
        out[key] = value * factor if isinstance(value, float) else max(1, round(value * factor / align) * align)
    return out


def check(model, overrides: dict, method: str, kinds: tuple) -> float:
    small, report = shrink(model, overrides, method)
    plan = plan_for(model, overrides)
    assert not plan.unplanned, plan.unplanned
    reference = zero_dropped(model, plan, {k: v for k, v in report.choices.items()}, kinds)
    inputs = random_inputs(model, dummy_inputs(model))
    return max_error(outputs(small, inputs), outputs(reference, inputs))


@pytest.mark.parametrize("family", sorted(FFN))
def test_ffn_cut_equals_the_source_with_dropped_units_zeroed(family):
    model = source(family)
    for factor in FACTORS:
        for method in METHODS:
            error = check(model, ffn_overrides(model, family, factor), method, (Kind.FFN,))
            assert error < 1e-5, (family, factor, method, error)


@pytest.mark.parametrize("family", sorted(HEADS))
def test_head_cut_equals_the_source_with_dropped_heads_zeroed(family):
    model = source(family)
    for method in METHODS:
        error = check(model, HEADS[family], method, (Kind.HEADS, Kind.KV_HEADS))
        assert error < 1e-5, (family, method, error)


def test_every_family_has_an_ffn_oracle_or_a_reason():
    assert set(FAMILIES) == set(FFN) | set(NO_FFN_ORACLE)


def unfused_twin(phi3) -> torch.nn.Module:
    """A Llama with the Phi3's exact weights: qkv_proj split into q, k, v and gate_up_proj into gate, up."""
    import transformers as T

    config = phi3.config
    fields = {k: getattr(config, k) for k in ("hidden_size", "intermediate_size", "num_hidden_layers",
                                              "num_attention_heads", "num_key_value_heads", "vocab_size",
                                              "max_position_embeddings", "rms_norm_eps", "pad_token_id")}
    llama = T.LlamaModel(T.LlamaConfig(**fields)).eval()
    head_dim = config.hidden_size // config.num_attention_heads
    widths = [config.num_attention_heads * head_dim] + [config.num_key_value_heads * head_dim] * 2
    state = {}
    for name, value in phi3.state_dict().items():
        if "qkv_proj" in name:
            for part, piece in zip("qkv", value.split(widths)):
                state[name.replace("qkv_proj", f"{part}_proj")] = piece
        elif "gate_up_proj" in name:
            gate, up = value.chunk(2)
            state[name.replace("gate_up_proj", "gate_proj")], state[name.replace("gate_up_proj", "up_proj")] = gate, up
        else:
            state[name] = value
    llama.load_state_dict(state)
    return llama


TWIN_CUTS = ({"hidden_size": 24, "intermediate_size": 48}, {"hidden_size": 40, "intermediate_size": 80},
             {"num_attention_heads": 2, "num_key_value_heads": 1, "hidden_size": 24})


@pytest.mark.parametrize("overrides", TWIN_CUTS, ids=("half", "five_sixths", "heads"))
def test_fused_phi3_equals_its_unfused_llama_twin(overrides):
    config_cls, fields, model_cls, *_ = FAMILIES["phi3"]
    torch.manual_seed(0)  # hidden 48 (head width 12), so that 5/6 keeps an even head width for rotary
    phi3 = perturbed(model_cls(config_cls(**{**fields, "hidden_size": 48, "intermediate_size": 96})).eval())
    llama = unfused_twin(phi3)
    inputs = random_inputs(phi3, dummy_inputs(phi3))
    assert max_error(outputs(phi3, inputs), outputs(llama, inputs)) < 1e-6
    for method in METHODS:
        small_phi3, _ = shrink(phi3, overrides, method)
        small_llama, _ = shrink(llama, overrides, method)
        error = max_error(outputs(small_phi3, inputs), outputs(small_llama, inputs))
        assert error < 1e-5, (overrides, method, error)


LAYOUTS = {  # family, config changes: every fused q|k|v layout of FUSED_LAYOUTS
    "gpt2": {}, "phi3": {}, "gpt_neox": {}, "modernbert": {}, "bloom": {},
    "falcon-multi-query": {"multi_query": True}, "falcon-classic": {"multi_query": False},
    "falcon-new-decoder": {"new_decoder_architecture": True, "num_kv_heads": 2},
}


def _captured_qkv(model, attention, fused_name: str, width: int) -> list[torch.Tensor]:
    """q, k and v as transformers' own code splits them when the fused projection outputs its row indices
    (at position 0, where rotary embeddings change nothing)."""
    rows = torch.arange(width, dtype=torch.float32)
    split = getattr(attention, "_split_heads", None) or getattr(attention, "_reshape", None)
    if split is not None:  # BLOOM, Falcon: the model's own split function
        parts = split(rows[None, None, :])
        return [p.reshape(-1) for p in parts]
    import transformers as T

    seen = []

    def capture(module, query, key, value, *args, **kwargs):
        seen.extend(t[0, :, 0, :].reshape(-1) for t in (query, key, value))
        return torch.zeros(query.shape[0], query.shape[2], query.shape[1], query.shape[3]), None

    T.AttentionInterface.register("interprune_capture", capture)
    model.set_attn_implementation("interprune_capture")
    fused = dict(model.named_modules())[fused_name]
    handle = fused.register_forward_hook(lambda m, args, out: rows.expand(*out.shape[:-1], width).clone())
    try:
        with torch.no_grad():
            model(**dummy_inputs(model))
    finally:
        handle.remove()
    return seen[:3]


@pytest.mark.parametrize("case", sorted(LAYOUTS))
def test_fused_layouts_match_transformers_own_split(case):
    from interprune.plan.fused import find_splits

    config_cls, fields, model_cls, *_ = FAMILIES[case.split("-")[0]]
    model = model_cls(config_cls(**{**fields, **LAYOUTS[case]})).eval()
    splits = {n: s for n, s in find_splits(model, model.state_dict(), model.config).items()
              if [p for p, _ in s.parts] == ["q", "k", "v"] and n.endswith("weight")}
    name, split = min(splits.items())
    attention = dict(model.named_modules())[name.rsplit(".", 2)[0]]
    width = sum(i.numel() for _, i in split.parts)
    for (part, ours), theirs in zip(split.parts, _captured_qkv(model, attention, name.rsplit(".", 1)[0], width)):
        first = dict.fromkeys(theirs.long().tolist())  # Falcon broadcasts each key/value head to its group
        theirs = torch.tensor(list(first))
        assert torch.equal(ours, theirs), (case, part)


@pytest.mark.parametrize("family", ["mixtral", "qwen2_moe"])
def test_calibrated_scores_each_expert_on_its_routed_tokens(family):
    from interprune.preserve.expert_stats import expert_scores

    model = source(family)
    overrides = ffn_overrides(model, family, 1 / 2)
    inputs = {"input_ids": torch.randint(0, 100, (2, 12), generator=torch.Generator().manual_seed(3))}
    plan = plan_for(model, overrides)
    scores = expert_scores(model, plan, inputs)
    experts = [d.name for d in plan.dimensions if ".experts." in d.name and d.kind == Kind.FFN]
    assert experts and set(experts) == set(scores)  # every expert of every layer scored on its own tokens
    small, report = shrink(model, overrides, "calibrated", calibration=inputs)
    reference = zero_dropped(model, plan, report.choices, (Kind.FFN,))
    assert max_error(outputs(small, inputs), outputs(reference, inputs)) < 1e-5
    chosen = {name: report.choices[name] for name in experts}
    assert len({tuple(v) for v in chosen.values()}) > 1  # experts keep their own units, not one shared choice


@pytest.mark.parametrize("method", METHODS)
def test_fewer_experts_keep_whole_experts_and_their_router_rows(method):
    model = source("mixtral")
    small, report = shrink(model, {"num_local_experts": 2, "num_experts_per_tok": 1}, method)
    src, dst = model.state_dict(), small.state_dict()
    for layer in range(2):
        kept = torch.tensor(report.choices[f"layers.{layer}.mlp.experts"])
        for name in ("mlp.experts.gate_up_proj", "mlp.experts.down_proj", "mlp.gate.weight"):
            key = f"layers.{layer}.{name}"
            assert torch.equal(dst[key], src[key][kept]), (key, method)
