"""``interprune pretrain``: train a detector from a bare config, to make a source model to shrink.

The demo's shipped source detector was made with this command (see ``assets/demo-source/pretrain.json``),
so anyone can re-create it; it is also how a user gets a big model for a domain of their own.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .data import open_dataset
from .errors import InterpruneError
from .hf.config import new_config
from .hf.models import build_model, save
from .hf.processors import load_processor
from .train.run import train
from .train.settings import TrainSettings
from .train.summary import RunSummary

PRESETS = Path(__file__).parent / "presets"


def read_model_config(spec: str | os.PathLike) -> dict[str, Any]:
    """A model config as a dict: a preset name (``demo``) or a JSON file."""
    path = PRESETS / f"{spec}-model.json" if (PRESETS / f"{spec}-model.json").is_file() else Path(spec)
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise InterpruneError(f"cannot read model config {spec!r} ({err}); give 'demo' or a JSON config file") from None


def pretrain(config: str | os.PathLike | dict, data: str | os.PathLike, out: str | os.PathLike,
             settings: TrainSettings, *, resume: bool = False, progress: bool = True) -> RunSummary | None:
    """Write ``out/init`` (the freshly initialised model) and train it into ``out/run``."""
    out = Path(out)
    fields = dict(config) if isinstance(config, dict) else read_model_config(config)
    dataset = open_dataset(data, seed=settings.seed)
    fields["id2label"] = {str(i): n for i, n in dataset.id2label.items()}
    fields["label2id"] = {n: i for i, n in dataset.id2label.items()}
    model_type = fields.pop("model_type", "detr")
    init = out / "init"
    if not init.exists():
        model_config = new_config(model_type, **fields)
        model = build_model(model_config, settings.seed)
        save(model, init, processor=load_processor(None, model_config, settings.image_size))  # one atomic folder
    return train(init, dataset, out / "run", settings, resume=resume, progress=progress)
