"""How much of the source's function a shrunk model keeps before any fine-tuning.

The demo's source detector (Conditional DETR, d_model 128, FFN 256, trained on synthetic shapes) is
shrunk at four cuts with each method, and every result is evaluated as it is on 60 freshly drawn
shapes images (seed 12345, as ``interprune demo`` checks the source): mAP@50 and validation loss.
Calibration uses 64 other shapes images (seed 777): the source domain, which is what the source's
activations mean something on. ``seconds`` is the time to shrink (calibration included). Every method
keeps the first layers unless it says otherwise; at the depth cut (``--cuts depth``) the validation loss
sums one auxiliary decoder loss fewer, so only its mAP compares with the source's.

For an encoder (``--encoder``): a small BERT (hidden 128, 4 layers, FFN 512) pre-trained here in
seconds by masked-language modelling on synthetic sentences; the measure is the Pearson correlation of
the pairwise cosine similarities of mean-pooled embeddings of 200 held-out sentences, shrunk model
against source (1.0: the same geometry), with 64 other sentences for calibration.

    PYTHONPATH=src python benchmarks/retention.py [--cuts ffn,d96] [--methods select,magnitude] [--out DIR]
    PYTHONPATH=src python benchmarks/retention.py --encoder
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
import warnings
from pathlib import Path

import torch

CUTS = {
    "ffn 256->128": {"encoder_ffn_dim": 128, "decoder_ffn_dim": 128},
    "d 128->96": {"d_model": 96},
    "d 128->96, ffn 256->192": {"d_model": 96, "encoder_ffn_dim": 192, "decoder_ffn_dim": 192},
    "d 128->64, ffn 256->128": {"d_model": 64, "encoder_ffn_dim": 128, "decoder_ffn_dim": 128},
    "layers 3+3->2+2": {"encoder_layers": 2, "decoder_layers": 2},
}
CUT_KEYS = dict(zip(("ffn", "d96", "d96f192", "half", "depth"), CUTS))
METHODS = {  # name -> shrink arguments
    "select": dict(method="select"),
    "magnitude": dict(method="magnitude"),
    "calibrated": dict(method="calibrated"),
    "calibrated+compensate": dict(method="calibrated", compensate=True),
    "calibrated+rotate+compensate": dict(method="calibrated", compensate=True, rotate=True),
    "rotate+compensate, layers importance": dict(method="calibrated", compensate=True, rotate=True,
                                                  layers="importance"),
    "rotate+compensate, layers uniform": dict(method="calibrated", compensate=True, rotate=True, layers="uniform"),
}
METHOD_KEYS = dict(zip(("select", "magnitude", "calibrated", "compensate", "rotate", "importance", "uniform"),
                       METHODS))


WORDS = {"colour": "red green blue yellow black white grey brown".split(),
         "animal": "cat dog fox owl bear wolf deer hare".split(),
         "verb": "sees chases follows finds hides watches meets avoids".split(),
         "place": "river forest hill field cave lake road barn".split()}


def sentences(count: int, seed: int) -> list[str]:
    """``the <colour> <animal> <verb> the <colour> <animal> near the <place>``, seeded."""
    rng = torch.Generator().manual_seed(seed)
    pick = lambda kind: WORDS[kind][int(torch.randint(len(WORDS[kind]), (1,), generator=rng))]
    return [f"the {pick('colour')} {pick('animal')} {pick('verb')} the {pick('colour')} {pick('animal')} near the "
            f"{pick('place')}" for _ in range(count)]


def encoder_retention(methods: list[str]) -> None:
    """Pre-train a small BERT by masked-language modelling, shrink it, compare embedding geometry."""
    from transformers import BertConfig, BertForMaskedLM, BertTokenizer

    from interprune.weights.shrink import shrink

    folder = Path(tempfile.mkdtemp(prefix="encoder-"))
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "near"] + [w for ws in WORDS.values() for w in ws]
    (folder / "vocab.txt").write_text("\n".join(vocab))
    tokenizer = BertTokenizer(str(folder / "vocab.txt"))
    torch.manual_seed(0)
    mlm = BertForMaskedLM(BertConfig(vocab_size=len(vocab), hidden_size=128, num_hidden_layers=4, num_attention_heads=4,
                                     intermediate_size=512, max_position_embeddings=32))
    optimiser = torch.optim.AdamW(mlm.parameters(), lr=1e-3)
    started = time.perf_counter()
    for step in range(400):
        batch = tokenizer(sentences(32, 1000 + step), return_tensors="pt", padding=True)
        labels = batch["input_ids"].clone()
        masked = (torch.rand(labels.shape, generator=torch.Generator().manual_seed(step)) < 0.15) & (labels > 4)
        batch["input_ids"] = batch["input_ids"].masked_fill(masked, tokenizer.mask_token_id)
        loss = mlm(**batch, labels=labels.masked_fill(~masked, -100)).loss
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    source = mlm.bert.eval()
    print(f"encoder source: BERT hidden 128, FFN 512, 4 layers; MLM loss {loss.item():.2f} after 400 steps "
          f"({time.perf_counter() - started:.0f} s)")
    held_out = tokenizer(sentences(200, 7), return_tensors="pt", padding=True)
    calibration = dict(tokenizer(sentences(64, 8), return_tensors="pt", padding=True))

    @torch.no_grad()
    def similarities(model) -> torch.Tensor:
        hidden = model(**held_out).last_hidden_state
        mask = held_out["attention_mask"][..., None].float()
        pooled = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
        sims = pooled @ pooled.T
        return sims[torch.triu_indices(len(sims), len(sims), 1).unbind()]

    reference = similarities(source)
    print(f"{'cut':<26} {'method':<38} {'sim. corr.':>10} {'seconds':>7}")
    for cut, overrides in (("hidden 128->96, ffn 384", {"hidden_size": 96, "intermediate_size": 384}),
                           ("hidden 128->64, ffn 256", {"hidden_size": 64, "intermediate_size": 256})):
        for name in methods:
            options = dict(METHODS[name])
            if options["method"] == "calibrated" or options.get("compensate"):
                options["calibration"] = calibration
            started = time.perf_counter()
            model, _ = shrink(source, overrides, **options)
            seconds = time.perf_counter() - started
            corr = torch.corrcoef(torch.stack([reference, similarities(model)]))[0, 1]
            print(f"{cut:<26} {name:<38} {corr:>10.3f} {seconds:>7.1f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cuts", default="ffn,d96,d96f192,half", help=f"some of {', '.join(CUT_KEYS)}")
    parser.add_argument("--methods", default="select,magnitude,calibrated,compensate,rotate",
                        help=f"some of {', '.join(METHOD_KEYS)}")
    parser.add_argument("--out", default=None, help="working folder (data); a temporary one by default")
    parser.add_argument("--calibration-size", type=int, default=64)
    parser.add_argument("--encoder", action="store_true", help="the encoder benchmark instead of the detector's")
    parser.add_argument("--recover", type=int, default=0, help="then 'recover' each compensated result for N steps "
                        "on 256 other unlabelled shapes images (seed 4242) and score it again")
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    if args.encoder:
        encoder_retention([METHOD_KEYS[k] for k in args.methods.split(",")])
        return

    from interprune.preserve.calibration import calibration_inputs
    from interprune.data import open_dataset
    from interprune.data.domains import write_domain
    from interprune.demo import DEMO_SOURCE
    from interprune.hf.models import load_model, save
    from interprune.weights.shrink import shrink
    from interprune.hf.processors import load_processor
    from interprune.train.run import evaluate

    work = Path(args.out or tempfile.mkdtemp(prefix="retention-"))
    check, calib = work / "shapes-check", work / "shapes-calibration"
    if not check.exists():
        write_domain("shapes", check, train=1, valid=60, size=160, seed=12345)
    if not calib.exists():
        write_domain("shapes", calib, train=args.calibration_size, valid=1, copies=1, size=160, seed=777)
    data = open_dataset(check)
    source = load_model(DEMO_SOURCE).float()
    processor = load_processor(DEMO_SOURCE, source.config)

    base = evaluate(DEMO_SOURCE, data)
    print(f"source: mAP@50 {base['map_50']:.3f}, val loss {base['val_loss']:.2f}")
    print(f"{'cut':<26} {'method':<38} {'mAP@50':>7} {'kept':>6} {'val loss':>8} {'seconds':>7}")
    for cut_key in args.cuts.split(","):
        cut = CUT_KEYS[cut_key]
        for method_key in args.methods.split(","):
            name = METHOD_KEYS[method_key]
            options = dict(METHODS[name])
            started = time.perf_counter()
            if options.get("method") in ("calibrated",) or options.get("compensate"):
                options["calibration"] = calibration_inputs(calib, processor, count=args.calibration_size)
            model, report = shrink(source, CUTS[cut], **options)
            seconds = time.perf_counter() - started
            with tempfile.TemporaryDirectory() as folder:
                save(model.float(), Path(folder) / "model", source=DEMO_SOURCE)
                result = evaluate(Path(folder) / "model", data)
            kept = result["map_50"] / base["map_50"]
            print(f"{cut:<26} {name:<38} {result['map_50']:>7.3f} {kept:>6.0%} {result['val_loss']:>8.2f} "
                  f"{seconds:>7.1f}", flush=True)
            if args.recover and options.get("compensate"):
                recovered(model, report, work, args.recover, data, base, f"{name} + recover {args.recover}", cut)


def recovered(model, report, work: Path, steps: int, data, base: dict, name: str, cut: str) -> None:
    """Distil the shrunk model from the source on unlabelled shapes images, then score it as above."""
    from interprune.data.domains import write_domain
    from interprune.demo import DEMO_SOURCE
    from interprune import save
    from interprune.recover import RecoverSettings, recover
    from interprune.train.run import evaluate

    pool = work / "shapes-unlabelled"
    if not pool.exists():
        write_domain("shapes", pool, train=256, valid=1, copies=1, size=160, seed=4242)
    with tempfile.TemporaryDirectory() as folder:
        small = save(model.float(), Path(folder) / "small", report=report, source=DEMO_SOURCE)
        started = time.perf_counter()
        summary = recover(small, DEMO_SOURCE, pool / "train", Path(folder) / "recovered",
                          RecoverSettings(steps=steps, batch_size=8, val_every=max(50, steps // 4)), progress=False)
        seconds = time.perf_counter() - started
        result = evaluate(Path(folder) / "recovered", data)
    print(f"{cut:<26} {name:<38} {result['map_50']:>7.3f} {result['map_50'] / base['map_50']:>6.0%} "
          f"{result['val_loss']:>8.2f} {seconds:>7.1f}  (held-out distillation loss {summary['val_loss_start']:.3f} "
          f"-> {summary['val_loss_end']:.3f})", flush=True)


if __name__ == "__main__":
    main()
