"""Models shipped inside the package, addressable by a short name wherever a source is named.

``demo`` is the demo's source detector (``assets/demo-source``): ``interprune sweep --preset demo`` and a
YAML ``source: demo`` find it without knowing where the package is installed.
"""

from __future__ import annotations

from pathlib import Path

from .errors import InterpruneError

__all__ = ["SHIPPED", "shipped", "resolve_source"]

ASSETS = Path(__file__).resolve().parent / "assets"
SHIPPED = {"demo": ASSETS / "demo-source"}


def shipped(name: str) -> Path:
    """The folder of the shipped model ``name``, checked to hold its weights."""
    folder = SHIPPED[name]
    if not (folder / "model.safetensors").is_file():
        raise InterpruneError(
            f"the shipped {name!r} source is missing from {folder}; re-create it with the command in the "
            "README section 'The demo's source detector'"
        )
    return folder


def resolve_source(source: str) -> str:
    """``source`` itself, or the folder of the shipped model it names (an existing path always wins)."""
    if source not in SHIPPED or Path(source).exists():
        return source
    return str(shipped(source))
