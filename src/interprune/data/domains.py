"""The synthetic domains by name, so the CLI, sweeps and the demo generate data the same way."""

from __future__ import annotations

from pathlib import Path

from . import rocks, shapes
from .synthetic import Draw, write_dataset

DOMAINS: dict[str, tuple[Draw, list[str]]] = {
    "rocks": (rocks.draw_rocks, rocks.NAMES),
    "shapes": (shapes.draw_shapes, shapes.NAMES),
}


def write_domain(domain: str, out: str | Path, **options) -> Path:
    """Write the synthetic ``domain`` as a Roboflow-layout export (see ``synthetic.write_dataset``)."""
    draw, names = DOMAINS[domain]
    return write_dataset(out, draw, names, domain, **options)
