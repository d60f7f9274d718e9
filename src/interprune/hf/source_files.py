"""One named file of a model source, a local folder or a Hub repository: its local path, or None.

The files that travel beside a shrunk model (tokenizer, chat template, generation and sentence-transformers
settings) are optional and come from either kind of source; reading them one way keeps a Hub id and a folder
giving the same output folder.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["source_file"]


def source_file(source: str | os.PathLike, name: str) -> Path | None:
    """``name`` (may name a subfolder: ``1_Pooling/config.json``) in a local folder, else downloaded from the Hub;
    None when the source has no such file. Other Hub failures (no network) are real errors and propagate."""
    folder = Path(source)
    if folder.is_dir():
        path = folder / name
        return path if path.is_file() else None
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    try:
        return Path(hf_hub_download(str(source), name))
    except EntryNotFoundError:  # the Hub model simply has no such file
        return None
