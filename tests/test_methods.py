"""The method registry: one record per method, one check of method options for the CLI and the sweep."""

import subprocess
import sys

import pytest

from interprune.errors import InterpruneError
from interprune.methods import METHODS, Kind, check_options, chooses_units, names


def test_kinds_and_calibration_of_every_method():
    assert names(Kind.STRUCTURED) == ("select", "first")
    assert names(Kind.DATA_AWARE) == ("magnitude", "calibrated")
    assert names(Kind.PER_TENSOR) == ("nearest-exact", "area", "avg-pool", "max-pool", "nearest", "linear", "random")
    assert [m.name for m in METHODS.values() if m.calibration] == ["calibrated"]
    assert chooses_units("first") and chooses_units("magnitude") and not chooses_units("area")
    assert not chooses_units("pretrained")  # a sweep init, not a method


@pytest.mark.parametrize("method, options, recipe", [
    ("area", {}, False), ("select", {}, False), ("magnitude", {}, True),
    ("select", {"compensate": True, "calibration": True}, True), ("calibrated", {"calibration": True}, True),
    ("first", {"layers": "uniform"}, True),
])
def test_check_options_says_whether_the_recipe_runs(method, options, recipe):
    full = {"calibration": False, "compensate": False, "layers": "first", "rotate": False, **options}
    assert check_options(method, **full) is recipe


@pytest.mark.parametrize("method, options, cli, yaml", [
    ("area", {"calibration": True}, "--calibration is read only by 'calibrated'",
     "calibration is read only by init 'calibrated'"),
    ("area", {"compensate": True, "calibration": True}, "method 'area' resamples each tensor on its own",
     "init 'area' takes no compensate/rotate/layers options; use one of magnitude, calibrated, select, first"),
    ("calibrated", {}, "--method calibrated needs calibration inputs; pass --calibration DATA",
     "init: calibrated needs calibration inputs; pass calibration: DATA"),
    ("select", {"rotate": True}, "--rotate needs calibration inputs", "rotate: true needs calibration inputs"),
])
def test_one_check_in_the_cli_and_the_yaml_words(method, options, cli, yaml):
    full = {"calibration": False, "compensate": False, "layers": "first", "rotate": False, **options}
    with pytest.raises(InterpruneError, match=cli):
        check_options(method, **full)
    with pytest.raises(InterpruneError, match=yaml):
        check_options(method, **full, words="yaml")


def test_the_registry_and_the_package_face_load_no_torch():
    code = ("import sys, interprune, interprune.methods, interprune.cli; "
            "interprune.cli.build_parser(); print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
