"""``interprune demo``: the whole story offline on a CPU, from data to report.

1. writes the synthetic rocks dataset (the paper's fine-tuning domain);
2. takes the source detector shipped with the package (pre-trained on synthetic shapes by
   ``interprune pretrain``; its recipe is in ``assets/demo-source/pretrain.json``) and checks that it
   genuinely detects on its own domain (mAP@50 on freshly drawn shapes);
3. runs the ``demo`` preset: the paper's eight experiments plus the other methods, two seeds;
4. writes the report and says where it is.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from .atomic import write_text
from .data import open_dataset
from .data.domains import write_domain
from .sources import SHIPPED, shipped
from .sweep.config import SweepConfig, load_sweep, preset_path
from .sweep.report import table_rows, write_report
from .sweep.results import Result, collect, mean_std
from .sweep.run import run_sweep
from .train.run import evaluate

DEMO_SOURCE = SHIPPED["demo"]


def demo_source() -> Path:
    return shipped("demo")


def check_source(source: Path, out: Path) -> dict:
    """mAP of the source on shapes it has never seen (a seed its pre-training did not use)."""
    folder = out / "data" / "shapes-check"
    if not folder.exists():
        write_domain("shapes", folder, train=1, valid=60, size=160, seed=12345)
    return evaluate(source, open_dataset(folder))


def run_demo(out: str | Path = "demo-results", *, steps: int | None = None, seeds: int | None = None,
             runtimes: list[str] | None = None, progress: bool = True) -> Path:
    """The whole demo; ``runtimes`` (e.g. ``["torch", "onnxruntime"]``) overrides the preset's bench runtimes."""
    out = Path(out)
    started = time.time()
    source = demo_source()
    overrides: dict = {"source": str(source)}
    if runtimes is not None:
        overrides["bench"] = {"runtimes": runtimes}
    config = load_sweep(preset_path("demo"), overrides)
    if steps:
        config.train = config.train.model_copy(update={"steps": steps, "val_every": min(config.train.val_every, steps)})
    if seeds:
        config.seeds = list(range(seeds))
    recipe = json.loads((source / "pretrain.json").read_text()) if (source / "pretrain.json").is_file() else {}
    check = check_source(source, out)
    print(f"source detector: mAP@50 {check['map_50']:.3f} (mAP {check['map']:.3f}) on 60 unseen synthetic-shapes "
          f"images, its own domain (how it was made: {source / 'pretrain.json'})")
    run_sweep(config, out, progress=progress)
    config, results = collect(out)
    report = write_report(out, (config, results))
    write_text(out / "source_check.json", json.dumps({**check, "recipe": recipe}, indent=1))
    write_text(out / "readme_table.md", readme_table(config, results))
    rows = table_rows(config, results)
    width = max(len(r["experiment"]) for r in rows)
    print(f"\n{'experiment':<{width}}  final val loss     mAP@50          latency ms  steps to baseline's final loss")
    steps = "steps to baseline's final loss"
    for r in rows:
        print(f"{r['experiment']:<{width}}  {r['final val loss']:<17}  {r['mAP@50']:<14}  {r['latency ms']:<10}  "
              f"{r[steps]}")
    print(f"\ndemo finished in {(time.time() - started) / 60:.1f} min; report: {report.resolve()} "
          f"(and report.html, summary.csv, figures/, and readme_table.md: the README's table of this run)")
    return report


def _described(config: SweepConfig, result: Result) -> str:
    """The experiment's name with what the bare name does not say: a copied twin, a preserving method's
    options, a pipeline's stages, a same-cost baseline."""
    experiment, summary = config.experiment(result.name), result.summaries[0]
    if summary.copied_from:
        return f"{result.name} (= {Path(summary.copied_from).parent.name}, trained once)"
    if experiment.teacher:
        return (f"**{result.name}** (fine-tuned {experiment.from_ or 'full'} → {experiment.init} shrink → distil)")
    if experiment.same_steps_as:
        return f"{result.name} (no teacher, as many steps)"
    extras = [name for name, on in (("rotate", experiment.rotate), ("compensate", experiment.compensate)) if on]
    return result.name + (f" (+ {', '.join(extras)})" if extras else "")


def readme_table(config: SweepConfig, results: list[Result]) -> str:
    """The README's demo table, made from a finished demo folder so the README's numbers are the run's own:
    parameters, validation loss before and after fine-tuning, mAP@50 (mean ± std over seeds), the pipeline's
    whole step count and the latency."""
    rows = {r["experiment"]: r for r in table_rows(config, results)}
    lines = ["| experiment | parameters | val loss at step 0 | final val loss | mAP@50 | pipeline steps | "
             "latency (1 CPU thread) |", "|---|---|---|---|---|---|---|"]
    for result in results:
        row = rows[result.name]
        start = mean_std([c[0][1] for c in result.curves if c and c[0][0] == 0])[0]
        latency = f"{row['latency ms']} ms" if row["latency ms"] != "-" else "-"
        lines.append(f"| {_described(config, result)} | {row['parameters']} | "
                     f"{'-' if start is None else f'{start:.1f}'} | {row['final val loss']} | {row['mAP@50']} | "
                     f"{row['pipeline steps']} | {latency} |")
    return "\n".join(lines) + "\n"
