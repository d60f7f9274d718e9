"""Sweeps as data: a YAML file, validated before any work, with errors that name the line.

A sweep says which source model, which smaller target (config overrides), which dataset, which
experiments (an initialisation each: ``pretrained``, ``random``, ``transfer`` or a shrink method),
which seeds and which training settings. Presets are such files shipped in the package.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..errors import InterpruneError
from ..plan import STRUCTURED
from ..preserve import PRESERVING, check_options
from ..resample import METHODS
from ..train.settings import TrainSettings

__all__ = ["Experiment", "SweepConfig", "load_sweep", "preset_path", "INITS"]

PRESETS = Path(__file__).resolve().parent.parent / "presets"
INITS = ("pretrained", "random", "transfer")


class Experiment(BaseModel):
    """One model to fine-tune: its size and how its weights start."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    size: Literal["full", "small"] = "small"
    init: str
    # options of the structure-aware methods (see ``preserve.fill``)
    calibration: str | None = Field(None, description="calibration data: a dataset/image folder or text file, "
                                    "or 'data' for the sweep's own training images")
    calibration_size: int = Field(32, gt=0)
    compensate: bool = False
    rotate: bool = False
    layers: Literal["first", "uniform", "importance"] = "first"

    @field_validator("init")
    @classmethod
    def known_init(cls, value: str) -> str:
        if value not in INITS and value not in METHODS and value not in PRESERVING:
            methods = ", ".join((*METHODS, *PRESERVING))
            raise ValueError(f"unknown init {value!r}; use one of {', '.join(INITS)} or a method: {methods}")
        return value

    @model_validator(mode="after")
    def method_options(self) -> "Experiment":
        if self.init in PRESERVING or self.compensate or self.rotate or self.layers != "first":
            if self.init not in PRESERVING and self.init not in STRUCTURED:
                raise ValueError(f"init {self.init!r} takes no compensate/rotate/layers options; use one of "
                                 f"{', '.join((*PRESERVING, *STRUCTURED))}")
            try:
                check_options(self.init, calibration=self.calibration is not None, compensate=self.compensate,
                              layers=self.layers, rotate=self.rotate)
            except InterpruneError as err:  # the same check as the CLI's, in the YAML's words
                message = str(err)
                for flag, key in (("--calibration DATA", "calibration: DATA"), ("--method ", "init: "),
                                  ("--compensate", "compensate: true"), ("--rotate", "rotate: true"),
                                  ("--layers ", "layers: ")):
                    message = message.replace(flag, key)
                raise ValueError(message) from None
        return self

    def shrink_options(self) -> dict[str, Any]:
        """The keyword arguments ``shrink`` takes for this experiment's method options."""
        return {"calibration": self.calibration, "calibration_size": self.calibration_size,
                "compensate": self.compensate, "rotate": self.rotate, "layers": self.layers}

    @model_validator(mode="after")
    def full_only(self) -> "Experiment":
        if self.init in ("pretrained", "transfer") and self.size != "full":
            raise ValueError(f"init {self.init!r} keeps the source's shape, so it needs size: full")
        return self

    @property
    def baseline(self) -> bool:
        return self.init == "random"


class Generate(BaseModel):
    """A synthetic dataset to write instead of reading one (the demo's rocks)."""

    model_config = ConfigDict(extra="forbid")

    domain: Literal["rocks", "shapes"] = "rocks"
    train: int = Field(127, gt=0)
    valid: int = Field(31, gt=0)
    copies: int = Field(3, gt=0)
    size: int = Field(256, ge=32)
    seed: int = 0


class SweepConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = "sweep"
    source: str = Field(description="Hub id or model folder of the full-size model")
    target: dict[str, Any] = Field(description="config overrides that make the small model")
    data: str | None = Field(None, description="dataset folder (Roboflow layout) or COCO JSON")
    generate: Generate | None = None
    seeds: list[int] = Field([0], min_length=1)
    keep: str = Field(r"^model\.backbone\.", description="tensors that 'random' init keeps from the source")
    train: TrainSettings = TrainSettings()
    experiments: list[Experiment] = Field(min_length=1)

    @field_validator("keep")
    @classmethod
    def valid_regex(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as err:
            raise ValueError(f"not a regular expression: {err}") from None
        return value

    @model_validator(mode="after")
    def unique_names(self) -> "SweepConfig":
        names = [e.name for e in self.experiments]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"experiment names must be unique; repeated: {', '.join(twice)}")
        return self

    def baseline_for(self, experiment: Experiment) -> Experiment | None:
        """The random-init experiment of the same size: what "trains faster" is measured against."""
        return next((e for e in self.experiments if e.baseline and e.size == experiment.size), None)


def preset_path(name: str) -> Path:
    path = PRESETS / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in PRESETS.glob("*.yaml"))
        raise InterpruneError(f"no preset named {name!r}; presets: {', '.join(known)}")
    return path


def _line_of(node: yaml.Node | None, loc: tuple) -> int | None:
    """The 1-based line of the YAML node at ``loc`` (or of its closest existing parent)."""
    line = node.start_mark.line + 1 if node is not None else None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            match = next((v for k, v in node.value if k.value == part), None)
            key = next((k for k, v in node.value if k.value == part), None)
            if match is None:
                return line
            line, node = (key or match).start_mark.line + 1, match
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            return line
    return line


def load_sweep(path: str | Path, overrides: dict[str, Any] | None = None) -> SweepConfig:
    """Read and validate a sweep YAML; relative ``data``/``source`` paths are relative to the file."""
    path = Path(path)
    try:
        text = path.read_text()
        raw = yaml.safe_load(text) or {}
        tree = yaml.compose(text)
    except OSError as err:
        raise InterpruneError(f"cannot read sweep file {path}: {err.strerror}") from None
    except yaml.YAMLError as err:
        raise InterpruneError(f"{path}: not valid YAML: {err}".replace("\n", " ")) from None
    if not isinstance(raw, dict):
        raise InterpruneError(f"{path}: a sweep is a YAML mapping (source, target, experiments, ...)")
    raw.update({k: v for k, v in (overrides or {}).items() if v is not None})
    try:
        config = SweepConfig.model_validate(raw)
    except ValidationError as err:
        errors = err.errors()  # an unknown key explains a "missing" one (a typo), so it goes first
        first = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
        loc = tuple(first["loc"])
        line = _line_of(tree, tuple(p for p in loc if not str(p).startswith("function-")))
        where = ".".join(str(p) for p in loc) or "sweep"
        message = first["msg"].removeprefix("Value error, ")
        if first["type"] == "extra_forbidden":
            message = "unknown key"
        raise InterpruneError(f"{path}:{line}: {where}: {message}") from None
    for key in ("data", "source"):
        value = getattr(config, key)
        if value and not Path(value).is_absolute() and (path.parent / value).exists():
            setattr(config, key, str((path.parent / value).resolve()))
    for experiment in config.experiments:
        value = experiment.calibration
        if value and value != "data" and not Path(value).is_absolute() and (path.parent / value).exists():
            experiment.calibration = str((path.parent / value).resolve())
    return config
