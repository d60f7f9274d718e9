"""``interprune recover``: distillation on unlabelled text or images for several families, exact resume,
bad input refused before any work, and the loss math against direct computations."""

import json
import math

import pytest
import torch
import transformers as T
from PIL import Image

from interprune.cli import main
from interprune.errors import InterpruneError
from interprune.recover import RecoverSettings, recover
from interprune.recover.loss import layer_pairs, logits_kl, state_error
from interprune import save, shrink

from .families import DETR

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(95)]
FAST = dict(batch_size=8, val_every=3, held_out=8, lr=1e-3)


@pytest.fixture(scope="module")
def text(tmp_path_factory):
    folder = tmp_path_factory.mktemp("text")
    g = torch.Generator().manual_seed(0)
    lines = [" ".join(f"w{int(i)}" for i in torch.randint(0, 95, (int(torch.randint(3, 12, (1,), generator=g)),),
                                                                 generator=g)) for _ in range(64)]
    (folder / "text.txt").write_text("\n".join(lines))
    return folder / "text.txt"


@pytest.fixture(scope="module")
def pictures(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pictures")
    g = torch.Generator().manual_seed(0)
    for i in range(12):
        Image.fromarray((torch.rand(40, 48, 3, generator=g) * 255).byte().numpy()).save(folder / f"{i}.png")
    return folder


def text_model(folder, model):
    model.save_pretrained(folder)
    (folder / "vocab.txt").write_text("\n".join(WORDS) + "\n")
    T.BertTokenizer(str(folder / "vocab.txt")).save_pretrained(folder)
    return folder


def bert():
    torch.manual_seed(0)  # the same source whatever ran before: recovery is measured from it
    return T.BertModel(T.BertConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                    vocab_size=100, max_position_embeddings=64))


def gpt2(vocab=100):
    torch.manual_seed(0)
    return T.GPT2LMHeadModel(T.GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=vocab, n_positions=64,
                                          bos_token_id=1, eos_token_id=2))


def shrunk(tmp_path, source, overrides, data, name="small", compensate=True):
    options = dict(calibration=str(data), compensate=True) if compensate else {}
    small, report = shrink(source, overrides, "calibrated" if compensate else "select", **options)
    return save(small, tmp_path / name, report=report, source=source)


@pytest.mark.parametrize("family", ["bert", "gpt2"])
def test_text_models_recover_towards_their_source(tmp_path, text, family):
    source = text_model(tmp_path / family, bert() if family == "bert" else gpt2())
    over = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1} if family == "bert" else {"n_embd": 16}
    small = shrunk(tmp_path, source, over, text, compensate=False)
    summary = recover(small, source, text, tmp_path / "out", RecoverSettings(steps=12, **FAST), progress=False)
    assert summary["kind"] == ("hidden" if family == "bert" else "logits")
    assert summary["kept_channels"] and summary["states_matched"] >= 2
    assert summary["val_loss_end"] < summary["val_loss_start"]
    loaded, info = (T.AutoModel if family == "bert" else T.AutoModelForCausalLM).from_pretrained(
        tmp_path / "out", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    meta = json.loads((tmp_path / "out" / "interprune.json").read_text())
    assert meta["recovered"]["steps"] == 12 and meta["choices"]  # the shrink's record is kept
    assert meta["recovered"]["val_loss_end"] == summary["val_loss_end"]
    assert (tmp_path / "out" / "recover" / "summary.json").is_file()
    assert (tmp_path / "out" / "tokenizer_config.json").is_file()


@pytest.mark.parametrize("family", ["vit", "detr"])
def test_vision_models_recover_on_unlabelled_images(tmp_path, pictures, family):
    if family == "vit":
        model = T.ViTForImageClassification(T.ViTConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                                        num_attention_heads=4, image_size=32, patch_size=8, num_labels=3))
        processor, over = T.ViTImageProcessor(size={"height": 32, "width": 32}), {"hidden_size": 16}
    else:
        model = T.DetrForObjectDetection(T.DetrConfig(**DETR))
        processor = T.DetrImageProcessor(size={"shortest_edge": 64, "longest_edge": 96})
        over = {"d_model": 16, "encoder_ffn_dim": 32, "decoder_ffn_dim": 32}
    model.save_pretrained(tmp_path / family)
    processor.save_pretrained(tmp_path / family)
    small = shrunk(tmp_path, tmp_path / family, over, pictures)
    summary = recover(small, tmp_path / family, pictures, tmp_path / "out",
                      RecoverSettings(steps=3, batch_size=4, val_every=3, held_out=3), progress=False)
    assert summary["kind"] == ("logits" if family == "vit" else "detection") and summary["states_matched"] >= 2
    auto = T.AutoModelForImageClassification if family == "vit" else T.AutoModelForObjectDetection
    _, info = auto.from_pretrained(tmp_path / "out", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]


def test_a_resumed_recovery_equals_an_uninterrupted_one(tmp_path, text, monkeypatch):
    source = text_model(tmp_path / "bert", bert())
    small = shrunk(tmp_path, source, {"hidden_size": 16}, text)
    settings = RecoverSettings(steps=6, log_every=1, **FAST)
    whole = recover(small, source, text, tmp_path / "whole", settings, progress=False)
    from interprune.recover.module import RecoverModule

    step = RecoverModule.training_step

    def dies_at_step_4(self, batch, index):
        if self.global_step == 4:
            raise RuntimeError("killed")
        return step(self, batch, index)

    monkeypatch.setattr(RecoverModule, "training_step", dies_at_step_4)
    with pytest.raises(RuntimeError, match="killed"):
        recover(small, source, text, tmp_path / "cut", settings, progress=False)
    monkeypatch.setattr(RecoverModule, "training_step", step)
    again = recover(small, source, text, tmp_path / "cut", settings, resume=True, progress=False)
    assert again["segments"] == 2 and again["val_loss_end"] == whole["val_loss_end"]
    a = T.AutoModel.from_pretrained(tmp_path / "whole").state_dict()
    b = T.AutoModel.from_pretrained(tmp_path / "cut").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    from interprune.train.metrics import read_metrics

    def losses(run):
        return [(r["step"], r.get("train_loss"), r.get("val_loss")) for r in read_metrics(tmp_path / run / "recover")]

    assert losses("cut") == losses("whole") and len(losses("whole")) >= 6  # every step once, the same values


def test_shrink_with_recover_in_one_go(tmp_path, text, capsys):
    source = text_model(tmp_path / "bert", bert())
    code = main(["shrink", str(source), "--set", "hidden_size=16", "--method", "calibrated", "--calibration",
                 str(text), "--compensate", "--recover", "3", "--out", str(tmp_path / "out")])
    assert code == 0, capsys.readouterr().err
    assert "recovered for 3 steps" in capsys.readouterr().out
    meta = json.loads((tmp_path / "out" / "interprune.json").read_text())
    assert meta["recovered"]["steps"] == 3 and meta["preserved"]["compensated"]
    T.AutoModel.from_pretrained(tmp_path / "out")


def test_bad_input_is_one_line_before_any_work(tmp_path, text, pictures, capsys):
    source = text_model(tmp_path / "gpt2", gpt2())
    small = shrunk(tmp_path, source, {"n_embd": 16}, text)
    other_task = text_model(tmp_path / "bert", bert())
    other_vocab = text_model(tmp_path / "gpt2-120", gpt2(vocab=120))
    cases = [
        (["--teacher", str(other_task), "--data", str(text)], "their outputs cannot be compared"),
        (["--teacher", str(other_vocab), "--data", str(text)], "vocabulary of 120 tokens"),
        (["--teacher", str(source), "--data", str(pictures)], "holds images, but the model's processor reads text"),
        (["--teacher", str(source), "--data", str(text), "--steps", "0"], "--steps: Input should be greater than 0"),
    ]
    for extra, message in cases:
        out = tmp_path / "never"
        code = main(["recover", str(small), "--out", str(out), *extra])
        err = capsys.readouterr().err
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
        assert not out.exists()
    code = main(["shrink", str(source), "--set", "n_embd=16", "--recover", "0", "--calibration", str(text),
                 "--compensate", "--out", str(tmp_path / "never")])
    err = capsys.readouterr().err
    assert code == 2 and not (tmp_path / "never").exists()
    assert err.strip() == "interprune: error: --recover 0: give the number of recovery steps, at least 1", err


def test_loss_terms_against_direct_computations():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(2, 5, 7, generator=g), torch.randn(2, 5, 7, generator=g)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    p, q = (t / 2).softmax(-1), (s / 2).softmax(-1)
    per = (p * (p.log() - q.log())).sum(-1)
    assert math.isclose(float(logits_kl(s, t, 2.0, mask)), float((per * mask).sum() / mask.sum() * 4), rel_tol=1e-5)
    assert float(logits_kl(t + 3.0, t, 2.0)) < 1e-6  # a constant shift leaves the distributions equal
    kept = torch.tensor([0, 2, 4])
    wide = torch.randn(2, 5, 9, generator=g)
    assert float(state_error(wide[..., kept], wide, kept)) == 0.0
    assert math.isclose(float(state_error(torch.zeros(2, 5, 3), wide, kept)), 1.0, rel_tol=1e-6)
    assert layer_pairs(3, 5, [0, 3]) == [(0, 0), (1, 1), (2, 4)]
    assert layer_pairs(3, 5, None) == [(0, 0), (1, 2), (2, 4)]


def test_the_refused_families_say_why(tmp_path):
    from interprune.recover.run import check_pair

    T.WhisperModel(T.WhisperConfig(d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                                   decoder_attention_heads=2, encoder_ffn_dim=16, decoder_ffn_dim=16, vocab_size=50, pad_token_id=0,
                                   bos_token_id=1, eos_token_id=2, decoder_start_token_id=1, num_mel_bins=8, max_source_positions=8, max_target_positions=8)
                   ).save_pretrained(tmp_path / "w")
    with pytest.raises(InterpruneError, match="reads audio"):
        check_pair(tmp_path / "w", tmp_path / "w")


def test_two_processes_over_gloo_recover_and_write_one_model(tmp_path, text):
    import os
    import subprocess
    import sys

    source = text_model(tmp_path / "bert", bert())
    small = shrunk(tmp_path, source, {"hidden_size": 16}, text, compensate=False)
    out = tmp_path / "ddp"
    run = subprocess.run(
        [sys.executable, "-m", "interprune", "recover", str(small), "--teacher", str(source), "--data", str(text),
         "--out", str(out), "--steps", "4", "--val-every", "2", "--batch-size", "4", "--held-out", "4",
         "--devices", "2", "--accelerator", "cpu"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stderr[-2000:]
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in run.stderr and run.stdout.count("recovered for 4 steps") == 1
    from interprune.train.metrics import read_metrics

    assert [int(r["step"]) for r in read_metrics(out / "recover") if "val_loss" in r] == [0, 2, 4]
    T.AutoModel.from_pretrained(out)


def test_an_existing_out_is_refused_unless_overwrite_which_leaves_one_model(tmp_path, text, capsys):
    """Recovering into another model's folder used to replace it without a word, and into a folder of other
    files mixed the model in. Now either is one line, exit 2, before any work; ``--overwrite`` replaces the
    model, and an earlier model's files that the new one does not write (shards of another count) are gone."""
    source = text_model(tmp_path / "gpt2", gpt2())
    small = shrunk(tmp_path, source, {"n_embd": 16}, text, compensate=False)
    other = shrunk(tmp_path, source, {"n_embd": 24}, text, name="other", compensate=False)
    (other / "model-00002-of-00002.safetensors").write_bytes(b"an earlier model's second shard")
    before = (other / "model.safetensors").read_bytes()
    args = ["recover", str(small), "--teacher", str(source), "--data", str(text), "--steps", "2", "--batch-size",
            "8", "--held-out", "8"]
    for out in (other, small):  # another model's folder, and the student's own
        code = main([*args, "--out", str(out)])
        err = capsys.readouterr().err
        assert code == 2 and "already exists; pass --overwrite" in err and len(err.strip().splitlines()) == 1, err
    assert (other / "model.safetensors").read_bytes() == before and not (other / "recover").exists()
    assert main([*args, "--out", str(other), "--overwrite"]) == 0
    assert not (other / "model-00002-of-00002.safetensors").exists()
    loaded = T.AutoModelForCausalLM.from_pretrained(other)
    assert loaded.config.n_embd == 16
    code = main([*args, "--out", str(other)])  # now it holds a run
    err = capsys.readouterr().err
    assert code == 2 and "holds a recovery run; pass --resume to continue it, --overwrite" in err


def test_the_summary_holds_the_final_models_held_out_loss_when_steps_are_not_a_multiple(tmp_path, text):
    """With ``--steps 5 --val-every 3`` the last held-out evaluation was at step 3: the summary printed the
    loss before recovery twice (or a stale one). The final model is now evaluated once more."""
    source = text_model(tmp_path / "gpt2", gpt2())
    small = shrunk(tmp_path, source, {"n_embd": 16}, text, compensate=False)
    summary = recover(small, source, text, tmp_path / "out", RecoverSettings(steps=5, **FAST), progress=False)
    from interprune.train.metrics import read_metrics

    validated = [int(r["step"]) for r in read_metrics(tmp_path / "out" / "recover") if r.get("val_loss") is not None]
    assert validated == [0, 3, 5]
    rows = {int(r["step"]): r for r in read_metrics(tmp_path / "out" / "recover")}
    assert summary["val_loss_end"] == pytest.approx(rows[5]["val_loss"]) and summary["val_loss_end"] < summary["val_loss_start"]


def test_a_student_with_a_rotated_residual_stream_is_matched_on_its_outputs_only(tmp_path, text):
    """After ``--rotate residual`` the student's stream holds mixtures of the teacher's channels: matching its
    block outputs against the teacher's kept channels (what recover did) pulled it away from its source. Its
    logits are matched alone; an encoder, whose output is that stream, is refused in one line."""
    from interprune.recover.run import check_pair, matching
    from .test_residual import llama

    teacher = text_model(tmp_path / "llama", llama(tied=False))
    small, report = shrink(teacher, {"hidden_size": 48, "head_dim": 16}, "calibrated", calibration=str(text),
                           rotate="residual")
    assert report.preserved["rotated"] == ["residual"]
    small = save(small, tmp_path / "small", report=report, source=teacher)
    s, t, kind = check_pair(small, teacher)
    match = matching(small, teacher, s, t, kind)
    assert kind == "logits" and not match.states and match.kept is None
    summary = recover(small, teacher, text, tmp_path / "out", RecoverSettings(steps=3, **FAST), progress=False)
    assert summary["states_matched"] == 0 and not summary["states_comparable"]
    meta = json.loads((small / "interprune.json").read_text())
    encoder = text_model(tmp_path / "bert", bert())
    student = shrunk(tmp_path, encoder, {"hidden_size": 16}, text, name="bert-small", compensate=False)
    info = json.loads((student / "interprune.json").read_text())
    info["preserved"] = {**(info.get("preserved") or {}), "rotated": meta["preserved"]["rotated"]}
    (student / "interprune.json").write_text(json.dumps(info))
    with pytest.raises(InterpruneError, match="was shrunk with --rotate residual: its hidden states mix"):
        matching(student, encoder, *check_pair(student, encoder))
