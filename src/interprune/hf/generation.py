"""``generation_config.json`` beside a shrunk model: the source's generation settings, not a default.

A model that generates keeps its stop tokens, sampling settings and length limits in ``generation_config.json``.
``save_pretrained`` of a freshly built target writes one derived from its config alone (marked
``_from_model_config``) and the streamed shrink writes none: both lose, e.g., a chat model's list of end tokens
and its temperature. The source's file is written instead, so every output generates as the source did.

Almost all of it is independent of the model's size. The exception is Whisper's ``alignment_heads``: (layer,
head) pairs of the decoder's cross-attention used for word timestamps, which a cut of decoder layers or heads
makes wrong (out of range, or other heads); they are left out then. Token ids are kept as they are: a shrink
keeps at least the vocabulary of the tokenizer beside the source.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from .source_files import source_file

__all__ = ["GENERATION_FILE", "copy_generation_config"]

GENERATION_FILE = "generation_config.json"
# Config keys that size what alignment_heads index (Whisper: decoder_*; others name them num_*).
_HEAD_LAYOUT = ("decoder_layers", "decoder_attention_heads", "num_hidden_layers", "num_attention_heads")


def copy_generation_config(source: str | os.PathLike, dest: Path) -> bool:
    """Write the source's generation config into ``dest`` (whose ``config.json`` is the target's) unless ``dest``
    already has one set on purpose (not derived from the config); True when written."""
    found = source_file(source, GENERATION_FILE)
    if found is None:
        return False
    written = dest / GENERATION_FILE
    if written.is_file() and not _read(written).get("_from_model_config", False):
        return False  # e.g. a recovered model saved with its own, already the source's
    settings = _read(found)
    if not settings:
        return False
    if "alignment_heads" in settings and _layout(source_file(source, "config.json")) != _layout(dest / "config.json"):
        del settings["alignment_heads"]
        written.write_text(json.dumps(settings, indent=2, sort_keys=True) + "\n")
    else:
        shutil.copy2(found, written)
    return True


def _layout(config_file: Path | None) -> tuple:
    """The sizes ``alignment_heads`` index, as the config class reads them (a saved config leaves defaults out)."""
    if config_file is None:
        return ()
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(config_file.parent))
    return tuple(getattr(config, key, None) for key in _HEAD_LAYOUT)


def _read(path: Path | None) -> dict[str, Any]:
    """A JSON object, or {} for a missing or unreadable file (a broken optional file is not copied)."""
    if path is None or not path.is_file():
        return {}
    try:
        found = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}
