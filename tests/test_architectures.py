"""The architecture matrix: every family halves, loses layers and grows, and loads with its Auto class."""

from __future__ import annotations

import pytest
import torch

from interprune import save, shrink
from interprune.hf.inputs import dummy_inputs

from .families import FAMILIES

CASES = ("half", "shallow", "grow")


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """Each family's tiny source, built and saved once for the whole module."""
    built: dict[str, tuple] = {}

    def get(family: str):
        if family not in built:
            config_cls, fields, model_cls, *_ = FAMILIES[family]
            torch.manual_seed(0)
            model = model_cls(config_cls(**fields)).eval()
            folder = tmp_path_factory.mktemp(family) / "source"
            model.save_pretrained(folder)
            built[family] = (model, folder)
        return built[family]

    return get


def finite_outputs(model) -> list[torch.Tensor]:
    with torch.no_grad():
        out = model(**dummy_inputs(model))
    tensors = [v for v in out.values() if isinstance(v, torch.Tensor) and v.is_floating_point()]
    assert tensors
    return tensors


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("family", list(FAMILIES))
def test_family_shrinks_grows_and_loads_with_its_auto_class(family, case, sources, tmp_path):
    model, folder = sources(family)
    overrides = FAMILIES[family][4][CASES.index(case)]
    small, report = shrink(folder, overrides, "select")
    out = save(small, tmp_path / "out", report=report, source=folder)
    loaded, info = FAMILIES[family][3].from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert all(torch.isfinite(t).all() for t in finite_outputs(loaded.eval()))
    smaller = case != "grow"
    assert (report.target_parameters < report.source_parameters) == smaller


@pytest.mark.parametrize("family", list(FAMILIES))
def test_same_size_shrink_is_bit_exact(family, sources):
    model, _ = sources(family)
    same, report = shrink(model, {}, "select")
    assert report.counts()["resampled"] == report.counts()["initialised"] == 0
    for name, value in model.state_dict().items():
        assert torch.equal(same.state_dict()[name], value), name
