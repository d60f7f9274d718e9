"""Sweeps as data: a YAML file, validated before any work, with errors that name the line.

A sweep says which source model, which smaller target (config overrides), which dataset, which
experiments (an initialisation each: ``pretrained``, ``random``, ``transfer`` or a shrink method),
which seeds and which training settings. Presets are such files shipped in the package.

An experiment may start from another one's result (``from:``, that run's fine-tuned model of the same seed,
shrunk with this experiment's init) and learn from it (``teacher:``), so sweeps describe pipelines such as
"fine-tune the full model -> shrink it -> distil"; experiments then run in dependency order. ``same_steps_as:``
trains for as many steps as another experiment's whole pipeline, its upstream runs included: the honest
baseline for a pipeline that spends steps on a teacher first.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..errors import InterpruneError
from ..methods import METHODS, check_options
from ..sources import resolve_source
from ..train.settings import TrainSettings

__all__ = ["Experiment", "SweepConfig", "load_sweep", "preset_path", "INITS", "DEPENDENCY_KEYS"]

PRESETS = Path(__file__).resolve().parent.parent / "presets"
# starts that are not shrink methods: the source as it is, the paper's random initialisation (``keep`` from the
# source, every other tensor fresh), and the whole state dict copied into a freshly built full-size model
INITS = ("pretrained", "scratch", "transfer")
DEPENDENCY_KEYS = ("from", "teacher", "same_steps_as")  # keys that name another experiment


class SweepError(ValueError):
    """A whole-sweep check that knows where in the YAML the problem is (``loc``), so its line can be named."""

    def __init__(self, loc: tuple, message: str) -> None:
        super().__init__(message)
        self.loc = loc


class Experiment(BaseModel):
    """One model to fine-tune: its size and how its weights start."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, serialize_by_alias=True)

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    size: Literal["full", "small"] = "small"
    init: str
    from_: str | None = Field(None, alias="from", description="start from this experiment's fine-tuned model "
                              "(same seed), shrunk with this experiment's init")
    teacher: str | None = Field(None, description="distil from this experiment's fine-tuned model (same seed)")
    same_steps_as: str | None = Field(None, description="train for as many steps as this experiment's whole "
                                      "pipeline (its upstream runs' steps included)")
    train: dict[str, Any] = Field({}, description="TrainSettings fields that differ for this experiment")

    @field_validator("train")
    @classmethod
    def known_settings(cls, value: dict[str, Any]) -> dict[str, Any]:
        try:
            TrainSettings(**value)
        except ValidationError as err:
            first = err.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise ValueError(f"{where}: {'unknown key' if first['type'] == 'extra_forbidden' else first['msg']}") from None
        return value

    def needs(self, key: str) -> str | None:
        """The experiment named under ``key`` (one of DEPENDENCY_KEYS), or None."""
        return getattr(self, "from_" if key == "from" else key)
    # options of the structure-aware methods (see ``preserve.fill``)
    calibration: str | None = Field(None, description="calibration data: a dataset/image folder or text file, "
                                    "or 'data' for the sweep's own training images")
    calibration_size: int = Field(32, gt=0)
    compensate: bool = False
    rotate: bool | Literal["heads", "residual", "both"] = False
    layers: Literal["first", "uniform", "importance"] = "first"
    budget: str | None = Field(None, description="instead of the sweep's target, the target the budget search "
                               "finds (e.g. latency=0.5: half the source's latency, one thread, CPU time)")

    @field_validator("budget")
    @classmethod
    def known_budget(cls, value: str | None) -> str | None:
        if value is not None:
            from ..budget.spec import parse_budget

            try:
                parse_budget(value)
            except InterpruneError as err:
                raise ValueError(str(err)) from None
        return value

    @field_validator("init")
    @classmethod
    def known_init(cls, value: str) -> str:
        if value == "random":  # the init's name before 0.4; it now names only the shrink method
            raise ValueError("init 'random' is now called 'scratch' (the paper's random initialisation: 'keep' from "
                             "the source, every other tensor fresh); the method 'random' is not a sweep init")
        if value not in INITS and value not in METHODS:
            methods = ", ".join(METHODS)
            raise ValueError(f"unknown init {value!r}; use one of {', '.join(INITS)} or a method: {methods}")
        return value

    @model_validator(mode="after")
    def method_options(self) -> "Experiment":
        try:  # the same check as the CLI's, in the YAML's words
            check_options(self.init, calibration=self.calibration is not None, compensate=self.compensate,
                          layers=self.layers, rotate=self.rotate, words="yaml")
        except InterpruneError as err:
            raise ValueError(str(err)) from None
        return self

    def shrink_options(self) -> dict[str, Any]:
        """The keyword arguments ``shrink`` takes for this experiment's method options."""
        return {"calibration": self.calibration, "calibration_size": self.calibration_size,
                "compensate": self.compensate, "rotate": self.rotate, "layers": self.layers}

    @model_validator(mode="after")
    def full_only(self) -> "Experiment":
        if self.init in ("pretrained", "transfer") and self.size != "full":
            raise ValueError(f"init {self.init!r} keeps the source's shape, so it needs size: full")
        if self.budget is not None and (self.size != "small" or self.init in INITS):
            raise ValueError(f"budget: the search makes a small model from a method, not with size {self.size!r} "
                             f"and init {self.init!r}")
        return self

    @property
    def baseline(self) -> bool:
        return self.init == "scratch"


class Generate(BaseModel):
    """A synthetic dataset to write instead of reading one (the demo's rocks)."""

    model_config = ConfigDict(extra="forbid")

    domain: Literal["rocks", "shapes"] = "rocks"
    train: int = Field(127, gt=0)
    valid: int = Field(31, gt=0)
    copies: int = Field(3, gt=0)
    size: int = Field(256, ge=32)
    seed: int = 0


class BenchSettings(BaseModel):
    """``bench: {runtimes: [torch, onnxruntime]}``: which runtimes measure every experiment's model."""

    model_config = ConfigDict(extra="forbid")

    runtimes: list[Literal["torch", "onnxruntime"]] = ["torch"]

    @field_validator("runtimes")
    @classmethod
    def installed(cls, value: list[str]) -> list[str]:
        if "onnxruntime" in value:
            from ..deploy.runtime import require_onnx

            try:
                require_onnx()
            except Exception as err:  # InterpruneError: pydantic wants a ValueError to name the line
                raise ValueError(str(err)) from None
        return list(dict.fromkeys(value))


class SweepConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = "sweep"
    source: str = Field(description="Hub id or model folder of the full-size model")
    target: dict[str, Any] = Field(description="config overrides that make the small model")
    data: str | None = Field(None, description="dataset folder (Roboflow layout) or COCO JSON")
    generate: Generate | None = None
    seeds: list[int] = Field([0], min_length=1)
    keep: str = Field(r"^model\.backbone\.", description="tensors that the 'scratch' init keeps from the source")
    train: TrainSettings = TrainSettings()
    bench: BenchSettings = Field(BenchSettings(), description="measure every experiment's latency and size "
                                 "('interprune bench'): true, false, or {runtimes: [torch, onnxruntime]}")
    experiments: list[Experiment] = Field(min_length=1)

    @property
    def runtimes(self) -> list[str]:
        """The runtimes that measure every experiment: none (``bench: false``), eager PyTorch, or those asked for."""
        return self.bench.runtimes

    @field_validator("bench", mode="before")
    @classmethod
    def bench_switch(cls, value: Any) -> Any:
        """``bench: true`` (eager PyTorch) and ``bench: false`` (nothing) are short for a list of runtimes."""
        return {"runtimes": ["torch"] if value else []} if isinstance(value, bool) else value

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

    @model_validator(mode="after")
    def dependencies(self) -> "SweepConfig":
        """Names under from/teacher/same_steps_as exist, and no experiment depends on itself."""
        index = {e.name: i for i, e in enumerate(self.experiments)}
        for i, e in enumerate(self.experiments):
            for key in DEPENDENCY_KEYS:
                name = e.needs(key)
                if name is not None and name not in index:
                    raise SweepError(("experiments", i, key), f"unknown experiment {name!r}; have: {', '.join(index)}")
            start = self.experiments[index[e.from_]] if e.from_ else None
            if start is not None and start.size == "small" and e.size == "full":
                raise SweepError(("experiments", i, "from"), f"{e.from_!r} is small; a full-size model cannot start "
                                 "from it (interprune shrinks, and grows only to compare)")
        for i, e in enumerate(self.experiments):
            cycle = self._cycle(e.name, [e.name])
            if cycle:
                key = next(k for k in DEPENDENCY_KEYS if e.needs(k) == cycle[1])
                raise SweepError(("experiments", i, key), "dependency cycle: " + " -> ".join(cycle))
        return self

    def _cycle(self, name: str, path: list[str]) -> list[str] | None:
        """A path of dependencies from ``path[0]`` back to itself, depth-first, or None."""
        for dep in self._edges(name):
            if dep == path[0]:
                return path + [dep]
            if dep not in path:
                found = self._cycle(dep, path + [dep])
                if found:
                    return found
        return None

    def _edges(self, name: str, keys: tuple[str, ...] = DEPENDENCY_KEYS) -> list[str]:
        e = self.experiment(name)
        return [d for d in (e.needs(k) for k in keys) if d is not None]

    def experiment(self, name: str) -> Experiment:
        return next(e for e in self.experiments if e.name == name)

    def upstream(self, experiment: Experiment) -> list[Experiment]:
        """The runs this experiment's result depends on (via from/teacher), transitively, each once."""
        found: list[str] = []
        todo = self._edges(experiment.name, ("from", "teacher"))
        while todo:
            name = todo.pop(0)
            if name not in found:
                found.append(name)
                todo += self._edges(name, ("from", "teacher"))
        return [self.experiment(n) for n in found]

    def ordered(self) -> list[Experiment]:
        """The experiments in the YAML's order, except that each comes after those it starts from or
        learns from."""
        done: list[Experiment] = []
        left = list(self.experiments)
        while left:
            ready = next(e for e in left if all(d in {x.name for x in done} for d in self._edges(e.name, ("from", "teacher"))))
            done.append(ready)
            left.remove(ready)
        return done

    def steps_of(self, experiment: Experiment) -> int:
        """This experiment's own training steps."""
        if "steps" in experiment.train:
            return int(experiment.train["steps"])
        if experiment.same_steps_as:
            return self.pipeline_steps(self.experiment(experiment.same_steps_as))
        return self.train.steps

    def pipeline_steps(self, experiment: Experiment) -> int:
        """Its own steps plus those of every run it depends on: what the result really cost."""
        return self.steps_of(experiment) + sum(self.steps_of(e) for e in self.upstream(experiment))

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
        cause = (first.get("ctx") or {}).get("error")
        if isinstance(cause, SweepError):  # a whole-sweep check that knows its place
            loc = cause.loc
            line = _line_of(tree, loc)
            where = ".".join(str(p) for p in loc)
        if first["type"] == "extra_forbidden":
            message = "unknown key"
        raise InterpruneError(f"{path}:{line}: {where}: {message}") from None
    for key in ("data", "source"):
        value = getattr(config, key)
        if value and not Path(value).is_absolute() and (path.parent / value).exists():
            setattr(config, key, str((path.parent / value).resolve()))
    config.source = resolve_source(config.source)  # 'demo': the source shipped with the package
    for experiment in config.experiments:
        value = experiment.calibration
        if value and value != "data" and not Path(value).is_absolute() and (path.parent / value).exists():
            experiment.calibration = str((path.parent / value).resolve())
    return config
