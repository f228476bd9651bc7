"""``swimdiff-geo info`` on models and rasters."""

from __future__ import annotations

import json

from click.testing import CliRunner
from swimdiff_geo.cli.main import cli


def test_info_on_a_model_prints_its_contract(landsat_change_model):
    result = CliRunner().invoke(cli, ["info", str(landsat_change_model), "--json"])
    assert result.exit_code == 0, result.output
    facts = json.loads(result.output)
    assert facts["model_type"] == "change_detection"
    assert facts["bands"] == ["SWIR1", "NIR", "RED", "GREEN"]
    assert facts["input"]["shape"][1] == 8


def test_info_on_a_raster_and_its_fit(s2_pair, landsat_pair, landsat_change_model, s2_change_model):
    result = CliRunner().invoke(cli, ["info", str(s2_pair[0]), "--model", str(s2_change_model),
                                      "--json"])  # fmt: skip
    assert result.exit_code == 0, result.output
    facts = json.loads(result.output)
    assert facts["count"] == 13 and facts["georeferenced"]
    assert facts["fits_model"]["fits"] and facts["fits_model"]["bands_used"]["B8A"] == 9
    result = CliRunner().invoke(cli, ["info", str(s2_pair[0]), "--model",
                                      str(landsat_change_model)])  # fmt: skip
    assert result.exit_code == 1
    assert "fits: false" in result.output and "13 bands" in result.output
