"""The residual-stream rotation (SliceGPT): exact at full width, exact after the cut when the stream has no
more directions than the small model keeps, and refused where the stream does not rotate."""

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from interprune import InterpruneError, shrink
from interprune.cli import main
from interprune.hf.config import target_config
from interprune.plan import make_plan
from interprune.preserve.residual import gain_form, rotate_residual
from interprune.sweep.config import Experiment
from interprune.walk import Batches

WIDTH, KEPT = 64, 48


def llama(tied: bool, rank: int | None = None) -> LlamaForCausalLM:
    """A tiny Llama with uneven norm gains; with ``rank``, every writer of its residual stream writes inside
    one random ``rank``-dimensional subspace, which no subset of channels spans."""
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=200, hidden_size=WIDTH, intermediate_size=128, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=16, tie_word_embeddings=tied)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        if rank is not None:
            basis = torch.linalg.qr(torch.randn(WIDTH, rank))[0]
            project = basis @ basis.T
            model.model.embed_tokens.weight.copy_(model.model.embed_tokens.weight @ project)
            for layer in model.model.layers:
                layer.self_attn.o_proj.weight.copy_(project @ layer.self_attn.o_proj.weight)
                layer.mlp.down_proj.weight.copy_(project @ layer.mlp.down_proj.weight)
        for name, weight in model.named_parameters():
            # a tied output layer cannot take the final norm's gain: keep that one even, so the cut stays exact
            if name.endswith("norm.weight") and not (tied and name == "model.norm.weight"):
                weight.copy_(torch.rand_like(weight) + 0.5)
    return model


def tokens(count: int, seed: int) -> dict:
    ids = torch.randint(0, 200, (count, 12), generator=torch.Generator().manual_seed(seed))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("tied", [False, True])
def test_turned_source_computes_the_same_function(tied):
    source = llama(tied)
    target = LlamaForCausalLM(target_config(source.config, {"hidden_size": KEPT, "head_dim": 16}))
    turn = rotate_residual(source, target, make_plan(source, target), Batches.of(tokens(16, 1), 8))
    assert turn is not None and turn.error < 1e-5
    test = tokens(6, 2)
    with torch.no_grad():
        a, b = source(**test).logits, turn.model(**test).logits
        assert relative(b, a) < 1e-5
        assert relative(turn.model.model(**test).last_hidden_state, source.model(**test).last_hidden_state) > 0.5
    assert not torch.equal(turn.model.model.embed_tokens.weight, source.model.embed_tokens.weight)
    assert torch.equal(torch.as_tensor(turn.choices["residual"]), torch.arange(KEPT))


@pytest.mark.parametrize("tied", [False, True])
def test_a_stream_of_few_directions_is_cut_exactly(tied):
    """The oracle: a stream confined to 48 directions loses nothing when cut to 48 channels along them; a
    choice of 48 channels cannot follow directions, with or without refits."""
    source = llama(tied, rank=KEPT)
    calibration, test = tokens(24, 1), tokens(8, 2)
    with torch.no_grad():
        reference = source(**test).logits
    cut = {"hidden_size": KEPT, "head_dim": 16}
    small, report = shrink(source, cut, "calibrated", calibration=calibration, rotate="residual")
    chosen, _ = shrink(source, cut, "calibrated", calibration=calibration, compensate=True)
    with torch.no_grad():
        assert relative(small(**test).logits, reference) < 2e-3  # RMS norms' epsilon over fewer channels
        assert relative(chosen(**test).logits, reference) > 0.1  # fifty times the turned cut's error
    kept = report.preserved
    assert kept["rotated"] == ["residual"]
    scale = (WIDTH / KEPT) ** 0.5  # the kept channels hold all the energy: only the width changes the gain
    assert set(kept["residual_scales"]) == {n for n, _ in small.named_parameters() if n.endswith("norm.weight")}
    assert all(abs(c - scale) < 1e-4 for c in kept["residual_scales"].values())


def test_a_tied_output_layer_with_uneven_final_gain_needs_its_own_weight_in_the_small_model():
    """Tied to the embedding, the output layer cannot take the final norm's gain: refused with the fix, and
    with the fix (an untied small model) the cut is exact again."""
    source = llama(True, rank=KEPT)
    with torch.no_grad():
        source.model.norm.weight.copy_(torch.rand(WIDTH) + 0.5)
        reference = source(**tokens(8, 2)).logits
    cut = {"hidden_size": KEPT, "head_dim": 16}
    runs = []
    handle = source.model.layers[0].register_forward_pre_hook(lambda *args: runs.append(1))
    with pytest.raises(InterpruneError, match="tie_word_embeddings=false"):  # after one of six mini-batches
        shrink(source, cut, "calibrated", calibration=tokens(24, 1), rotate="residual", calibration_batch=4)
    handle.remove()
    assert len(runs) <= 2  # the prefix's probe and the first mini-batch, not the whole pass
    small, report = shrink(source, {**cut, "tie_word_embeddings": False}, "calibrated", calibration=tokens(24, 1),
                           rotate="residual")
    assert small.lm_head.weight is not small.model.embed_tokens.weight
    # the source counted as it is (tied), not as the rotated copy with an output layer of its own
    assert report.source_parameters == sum(p.numel() for p in source.parameters())
    assert report.target_parameters == sum(p.numel() for p in small.parameters())
    with torch.no_grad():
        assert relative(small(**tokens(8, 2)).logits, reference) < 2e-3


def test_rotation_with_compensation_and_heads_runs_and_records_both():
    source = llama(False)
    small, report = shrink(source, {"hidden_size": KEPT, "head_dim": 16}, "calibrated", calibration=tokens(24, 1),
                           rotate="both", compensate=True)
    assert report.preserved["rotated"] == ["residual"]  # rotary heads are never turned
    assert report.preserved["compensated"]
    with torch.no_grad():
        assert torch.isfinite(small(**tokens(4, 2)).logits).all()


def test_gain_forms_of_rms_norms_and_a_layer_norm():
    from transformers.models.gemma.modeling_gemma import GemmaRMSNorm
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    a, b = gain_form(LlamaRMSNorm(8), 8)
    assert abs(a - 1) < 1e-4 and abs(b) < 1e-4
    a, b = gain_form(GemmaRMSNorm(8), 8)  # gain 1 + weight
    assert abs(a - 1) < 1e-4 and abs(b - 1) < 1e-4
    assert gain_form(torch.nn.LayerNorm(8), 8) is None  # subtracts the mean: no rotation keeps it


def test_a_layer_norm_family_is_refused_with_one_line():
    torch.manual_seed(0)
    source = GPT2LMHeadModel(GPT2Config(vocab_size=100, n_embd=32, n_layer=2, n_head=4, n_positions=32)).eval()
    ids = torch.randint(0, 100, (8, 10))
    with pytest.raises(InterpruneError, match="cannot turn this model's residual stream") as err:
        shrink(source, {"n_embd": 24}, "calibrated", calibration={"input_ids": ids}, rotate="residual")
    assert "\n" not in str(err.value) and "--rotate heads" in str(err.value)


def test_rotation_values_are_checked_in_the_cli_and_the_sweep(tmp_path, capsys):
    with pytest.raises(SystemExit) as code:
        main(["shrink", str(tmp_path), "--rotate", "sideways", "--out", str(tmp_path / "o")])
    assert code.value.code == 2 and "invalid choice: 'sideways'" in capsys.readouterr().err
    experiment = Experiment(name="a", init="calibrated", size="small", calibration="data", rotate="residual")
    assert experiment.shrink_options()["rotate"] == "residual"
    with pytest.raises(ValueError, match="rotate"):
        Experiment(name="a", init="calibrated", size="small", calibration="data", rotate="sideways")
