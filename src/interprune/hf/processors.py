"""Processors: the image processor or tokenizer that turns raw examples into a model's inputs.

A model's processor files travel with its weights (``save`` copies them), so training, calibration,
prediction and benchmarks prepare inputs exactly as the model expects. All processor loading lives here.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path
from typing import Any

import transformers
from transformers import PretrainedConfig

from ..errors import InterpruneError

__all__ = ["PROCESSOR_FILES", "copy_processor_files", "tokenizer_size", "load_processor", "model_processor"]

PROCESSOR_FILES = ("preprocessor_config.json", "tokenizer.json", "tokenizer_config.json",
                   "special_tokens_map.json", "vocab.txt", "vocab.json", "merges.txt", "spiece.model",
                   "tokenizer.model")


def copy_processor_files(source: str | os.PathLike, dest: Path) -> None:
    """Copy image-processor/tokenizer files from a local folder, or fetch them for a Hub id."""
    folder = Path(source)
    if folder.is_dir():
        for name in PROCESSOR_FILES:
            if (folder / name).is_file():
                shutil.copy2(folder / name, dest / name)
        return
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    for name in PROCESSOR_FILES:
        try:
            shutil.copy2(hf_hub_download(str(source), name), dest / name)
        except EntryNotFoundError:  # the Hub model simply has no such file; other failures are real errors
            continue


def tokenizer_size(source: str | os.PathLike) -> int | None:
    """How many token ids the source's tokenizer files know, or None when it has none (local folders)."""
    folder = Path(source)
    if not folder.is_dir():
        return None
    if (folder / "tokenizer.json").is_file():
        data = json.loads((folder / "tokenizer.json").read_text())
        vocab = data.get("model", {}).get("vocab") or {}
        size = len(vocab) if isinstance(vocab, (dict, list)) else 0
        ids = [t.get("id", -1) for t in data.get("added_tokens", [])] + (list(vocab.values()) if isinstance(vocab, dict) else [])
        return max([size - 1, *ids]) + 1 if (size or ids) else None
    if (folder / "vocab.txt").is_file():
        return sum(1 for _ in (folder / "vocab.txt").open())
    if (folder / "vocab.json").is_file():
        return len(json.loads((folder / "vocab.json").read_text()))
    return None


def load_processor(source: str | os.PathLike | None, config: PretrainedConfig, image_size: int | None = None) -> Any:
    """The model's own image processor; a default one for its type when the folder has none (or when there is
    no folder yet: ``source`` None, so a path is never mistaken for a Hub id and looked up)."""
    from transformers import AutoImageProcessor

    try:
        if source is None:
            raise OSError("no saved processor")
        processor = AutoImageProcessor.from_pretrained(str(source))
    except (OSError, ValueError):
        from transformers.models.auto.image_processing_auto import IMAGE_PROCESSOR_MAPPING_NAMES

        names = IMAGE_PROCESSOR_MAPPING_NAMES.get(config.model_type) or {}  # {"torchvision": ..., "pil": ...}
        name = (names.get("torchvision") or names.get("pil")) if isinstance(names, dict) else names
        processor = getattr(transformers, name)()
    if image_size:
        processor.size = {"shortest_edge": image_size, "longest_edge": math.ceil(image_size * 5 / 3)}
    return processor


def model_processor(source: str | os.PathLike) -> Any:
    """The source's own image processor, else its tokenizer: what turns raw examples into its inputs."""
    from transformers import AutoImageProcessor, AutoTokenizer

    for auto in (AutoImageProcessor, AutoTokenizer):
        try:
            return auto.from_pretrained(str(source))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    raise InterpruneError(f"{source} has no image processor or tokenizer files, so calibration data cannot be "
                          f"prepared for it; save them beside the model (e.g. preprocessor_config.json)")
