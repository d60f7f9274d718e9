"""The cases the sequential engine must reproduce: shrinks of the demo source detector and of tiny text
models, with the data-aware recipe. ``python -m tests.engine_cases`` (run once, with the implementation
that ran every example in one batch) wrote ``tests/data/engine_reference.json``: each case's choices and,
per tensor, sums that pin its values. ``tests/test_engine.py`` checks today's code against it."""

from __future__ import annotations

import json
from pathlib import Path

import torch

REFERENCE = Path(__file__).parent / "data" / "engine_reference.json"


_IMAGES: dict[int, Path] = {}


def demo_images(count: int = 6) -> Path:
    """A folder of ``count`` shapes images of the source domain. Drawn once per process (the seed fixes
    them) and removed when the process ends, so test runs leave no folders behind in the temp directory."""
    import atexit
    import shutil
    import tempfile

    from interprune.data.domains import write_domain

    if count not in _IMAGES:
        folder = Path(tempfile.mkdtemp(prefix="engine-cases-"))
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        write_domain("shapes", folder / "calib", train=count, valid=1, copies=1, size=96, seed=777)
        _IMAGES[count] = folder / "calib"
    return _IMAGES[count]


def demo_pixels(count: int = 6) -> dict:
    """``count`` shapes images of the source domain, through the demo source's own processor."""
    from interprune.hf.processors import model_processor
    from interprune.preserve.calibration import calibration_inputs
    from interprune.demo import DEMO_SOURCE

    return calibration_inputs(demo_images(count), model_processor(DEMO_SOURCE), count=count)


def tiny_qwen():
    from transformers import Qwen2Config, Qwen2Model

    torch.manual_seed(0)
    config = Qwen2Config(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=60, max_position_embeddings=32)
    return Qwen2Model(config).eval()


def text_ids() -> dict:
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 50, (6, 10), generator=gen)
    mask = torch.ones_like(ids)
    mask[4:, 7:] = 0  # two padded examples
    return {"input_ids": ids, "attention_mask": mask}


def cases() -> dict:
    """name -> (source, overrides, options); calibration inputs are made by ``inputs(name)``."""
    from interprune.demo import DEMO_SOURCE
    from interprune.hf.models import load_model

    from .conftest import tiny_bert

    demo = load_model(DEMO_SOURCE).float()
    full = dict(method="calibrated", compensate=True, rotate=True)
    return {
        "demo-half": (demo, {"d_model": 64, "encoder_ffn_dim": 128, "decoder_ffn_dim": 128}, full),
        "demo-ffn": (demo, {"encoder_ffn_dim": 128, "decoder_ffn_dim": 128}, dict(method="calibrated", compensate=True)),
        "demo-depth": (demo, {"d_model": 96, "encoder_layers": 2, "decoder_layers": 2}, {**full, "layers": "importance"}),
        "qwen-half": (tiny_qwen(), {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 2}, {**full, "layers": "importance"}),
        "bert-half": (tiny_bert(), {"hidden_size": 16, "intermediate_size": 32}, full),
    }


def fingerprint(model: torch.nn.Module, report) -> dict:
    """Choices exactly; per tensor its shape, sum, sum of squares and a position-weighted sum."""
    tensors = {}
    for name, value in model.state_dict().items():
        v = value.detach().double().flatten()
        w = torch.linspace(-1, 1, v.numel(), dtype=torch.float64) if v.numel() > 1 else torch.ones(1, dtype=torch.float64)
        tensors[name] = [list(value.shape), float(v.sum()), float((v * v).sum()), float((v * w).sum())]
    return {"choices": report.choices, "preserved": {k: report.preserved[k] for k in ("layers", "rotated", "compensated")},
            "tensors": tensors}


def run_case(name: str, **extra) -> dict:
    from interprune.weights.shrink import shrink

    source, overrides, options = cases()[name]
    inputs = demo_pixels() if name.startswith("demo") else text_ids()
    model, report = shrink(source, overrides, calibration=inputs, **options, **extra)
    return fingerprint(model, report)


if __name__ == "__main__":
    REFERENCE.write_text(json.dumps({name: run_case(name) for name in cases()}, indent=0, sort_keys=True))
    print("wrote", REFERENCE)
