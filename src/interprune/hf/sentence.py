"""sentence-transformers files beside a shrunk model: how its token embeddings become one sentence embedding.

A sentence-transformers folder (all-MiniLM-L6-v2) is a transformers model plus ``modules.json``, which lists the
modules after it (pooling, normalisation), and their settings. Without them ``SentenceTransformer(out)`` falls
back to mean pooling without normalisation: another embedding than the source's. A shrink changes the width the
pooling module is told (``word_embedding_dimension``; ``embedding_dimension`` in newer releases) and may cut the
positions the model has (``max_seq_length`` of the transformer module); both are corrected from the target's
config, which is already in the output folder.

Only modules whose files are understood are written: the transformer at the folder's root (what was shrunk),
pooling and normalisation. A folder listing any other module (a Dense layer, whose weights keep the source's
width) gets no sentence-transformers files at all: a setup that fails to load, or pools otherwise than the
source, would be worse than none.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from .config import hidden_size
from .source_files import source_file

__all__ = ["MODULES_FILE", "sentence_files", "copy_sentence_files"]

MODULES_FILE = "modules.json"
KNOWN = ("Transformer", "Pooling", "Normalize")
# The transformer module's settings; sentence-transformers reads the first of these it finds.
SETTINGS = tuple(f"sentence_{kind}_config.json"
                 for kind in ("bert", "roberta", "distilbert", "camembert", "albert", "xlm-roberta", "xlnet"))
VERSIONS_FILE = "config_sentence_transformers.json"  # versions, prompts, similarity: nothing sized
WIDTH_KEYS = ("word_embedding_dimension", "embedding_dimension")
_FOLDER = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")  # a module's own subfolder, never a path out of the model


def copy_sentence_files(source: str | os.PathLike, dest: Path) -> bool:
    """Write the source's sentence-transformers files, corrected for the target in ``dest``; True when written."""
    files = sentence_files(source, dest)
    for name, content in (files or {}).items():
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        (dest / name).write_bytes(content)
    return bool(files)


def sentence_files(source: str | os.PathLike, dest: Path) -> dict[str, bytes] | None:
    """The files to write (name relative to the folder -> content) for the target whose config.json is in
    ``dest``; None when the source is no sentence-transformers folder or lists a module not understood."""
    found = source_file(source, MODULES_FILE)
    modules = _json(found)
    if not isinstance(modules, list) or not modules:
        return None
    kinds = [_kind(module) for module in modules]
    if None in kinds or kinds[0] != "Transformer" or kinds.count("Transformer") != 1:
        return None
    target = _config(dest)
    width = _hidden_size(target)
    if width is None:
        return None
    files = {MODULES_FILE: found.read_bytes()}
    versions = source_file(source, VERSIONS_FILE)
    if versions is not None:
        files[VERSIONS_FILE] = versions.read_bytes()
    for name in SETTINGS:
        settings = source_file(source, name)
        if settings is not None:
            read = _json(settings)
            if not isinstance(read, dict):
                return None
            files[name] = _dumps(_fit_length(read, source, target))
            break
    for module, kind in zip(modules[1:], kinds[1:]):
        name = f"{module['path']}/config.json"
        config = source_file(source, name)
        if kind == "Pooling":
            read = _json(config)
            if not isinstance(read, dict) or not any(key in read for key in WIDTH_KEYS):
                return None
            files[name] = _dumps({k: width if k in WIDTH_KEYS else v for k, v in read.items()})
        elif config is not None:  # Normalize: its settings name no size (and it needs none: often no folder)
            files[name] = config.read_bytes()
    return files


def _kind(module: Any) -> str | None:
    """Transformer, Pooling or Normalize for a module understood here, else None. The transformer must be the
    model at the folder's root (``path`` empty): that is what was shrunk."""
    if not isinstance(module, dict) or not all(isinstance(module.get(key), str) for key in ("type", "path")):
        return None
    package, _, kind = module["type"].rpartition(".")
    if not package.startswith("sentence_transformers") or kind not in KNOWN:
        return None
    path = module["path"]
    if kind == "Transformer":
        return kind if path == "" else None
    return kind if _FOLDER.fullmatch(path) else None


def _fit_length(settings: dict[str, Any], source: str | os.PathLike, target: Any) -> dict[str, Any]:
    """``max_seq_length`` within the target's positions when the shrink cut them. A source whose config has a
    few more positions than its tokenizer's ``model_max_length`` (RoBERTa: 514 for 512, the padding offset)
    keeps that offset."""
    length, positions = settings.get("max_seq_length"), getattr(target, "max_position_embeddings", None)
    config = source_file(source, "config.json")
    before = getattr(_config(config.parent), "max_position_embeddings", None) if config is not None else None
    if not all(isinstance(v, int) for v in (length, positions, before)) or positions >= before:
        return settings
    tokenizer = _json(source_file(source, "tokenizer_config.json"))
    usable = tokenizer.get("model_max_length") if isinstance(tokenizer, dict) else None
    offset = before - usable if isinstance(usable, int) and 0 <= before - usable <= 2 else 0
    return {**settings, "max_seq_length": min(length, positions - offset)}


def _hidden_size(config: Any) -> int | None:
    """The width of the transformer's token embeddings, whatever the config calls it (``dim``, ``d_model``...)."""
    for part in (config, getattr(config, "text_config", None)):
        width = hidden_size(part) if part is not None else None
        if width is not None:
            return width
    return None


def _config(folder: Path) -> Any:
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(str(folder))
    except (OSError, ValueError, KeyError):
        return None


def _json(path: Path | None) -> Any:
    if path is None:
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _dumps(settings: dict[str, Any]) -> bytes:
    return (json.dumps(settings, indent=2) + "\n").encode()
