"""Processors: the image processor or tokenizer that turns raw examples into a model's inputs.

A model's processor files travel with its weights (``save`` copies them), so training, calibration,
prediction and benchmarks prepare inputs exactly as the model expects; the chat template, generation settings
and sentence-transformers modules travel with them (``copy_processor_files``). All processor loading lives here.
"""

from __future__ import annotations

import functools
import json
import math
import os
import shutil
from pathlib import Path
from typing import Any

import transformers
from transformers import PretrainedConfig

from ..errors import InterpruneError
from .source_files import source_file

__all__ = ["PROCESSOR_FILES", "copy_processor_files", "tokenizer_size", "tokenizer_inputs", "load_processor",
           "model_processor"]

PROCESSOR_FILES = ("preprocessor_config.json", "tokenizer.json", "tokenizer_config.json",
                   "special_tokens_map.json", "added_tokens.json", "vocab.txt", "vocab.json", "merges.txt",
                   "spiece.model", "sentencepiece.bpe.model", "tokenizer.model",
                   "chat_template.jinja", "chat_template.json")  # a chat model's template: tokenizer.chat_template
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "spiece.model",
                   "sentencepiece.bpe.model", "tokenizer.model")
CHAT_TEMPLATES = "additional_chat_templates"  # a folder of named templates (local sources: a Hub folder is unlisted)


def copy_processor_files(source: str | os.PathLike, dest: Path, *, sentence_transformers: bool = True) -> None:
    """Copy what a user needs beside the weights from a local folder, or fetch it for a Hub id: the image
    processor or tokenizer files with the chat template, the generation settings (``hf.generation``), and the
    sentence-transformers modules corrected for the target (``hf.sentence``; ``sentence_transformers=False``
    for a folder without PyTorch weights, which sentence-transformers could not load).

    ``dest`` must already hold the target's ``config.json`` (the corrections read it); callers write into the
    temporary folder that is renamed into place, so these files are as atomic as the weights."""
    from .generation import copy_generation_config
    from .sentence import copy_sentence_files

    for name in PROCESSOR_FILES:
        found = source_file(source, name)
        if found is not None:
            shutil.copy2(found, dest / name)
    if (Path(source) / CHAT_TEMPLATES).is_dir():
        shutil.copytree(Path(source) / CHAT_TEMPLATES, dest / CHAT_TEMPLATES, dirs_exist_ok=True)
    copy_generation_config(source, dest)
    if sentence_transformers:
        copy_sentence_files(source, dest)


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


def tokenizer_inputs(source: str | os.PathLike) -> tuple[str, ...] | None:
    """The inputs the tokenizer beside a model produces for a text (BERT's: input_ids, token_type_ids,
    attention_mask), or None when the local folder has none. This is what the model is fed in use, so what an
    exported graph must take: ONNX Runtime refuses a feed with a name the graph lacks."""
    folder = Path(source)
    present = [name for name in TOKENIZER_FILES if (folder / name).is_file()] if folder.is_dir() else []
    if not present:
        return None
    stamp = tuple((name, (folder / name).stat().st_mtime_ns) for name in present)  # a rewritten tokenizer is new
    return _tokenizer_inputs(str(folder.resolve()), stamp)


@functools.lru_cache(maxsize=16)
def _tokenizer_inputs(folder: str, stamp: tuple) -> tuple[str, ...] | None:
    """Loaded once per folder and version: dummy inputs are made several times per export or bench."""
    from transformers import AutoTokenizer

    try:
        return tuple(AutoTokenizer.from_pretrained(folder)("a"))
    except Exception:  # noqa: BLE001 - files a tokenizer cannot load from: no tokenizer, so no extra inputs
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
