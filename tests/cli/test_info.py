"""``swimdiff-geo info`` on models and rasters."""

from __future__ import annotations

import json
import zipfile

import rasterio
import rasterio.shutil
from click.testing import CliRunner
from swimdiff_geo.cli.main import cli

from tests.inference.test_change import as_reflectance


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


def test_info_on_a_raster_inside_a_zip(s2_pair, tmp_path):
    """A GDAL virtual path (what the engine takes, and what a ZIP's error message suggests)."""
    archive = tmp_path / "pair.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.write(s2_pair[0], "a.tif")
    path = f"/vsizip/{archive}/a.tif"
    result = CliRunner().invoke(cli, ["info", path, "-m", "s2_change_swimdiff", "--json"])
    assert result.exit_code == 0, result.output
    facts = json.loads(result.output)
    assert facts["count"] == 13 and facts["fits_model"]["fits"]
    result = CliRunner().invoke(cli, ["info", f"/vsizip/{archive}/missing.tif"])
    assert result.exit_code == 1 and "missing.tif" in result.output


def test_info_on_a_raster_table_of_a_geopackage(landsat_pair, tmp_path):
    """A driver's dataset name (``GPKG:file:table``) opens as GDAL opens it (no local file of
    that name to check first)."""
    gpkg = tmp_path / "rasters.gpkg"
    # (rasterio upper-cases creation option values: the table is L2020)
    rasterio.shutil.copy(str(landsat_pair[1]), str(gpkg), driver="GPKG", RASTER_TABLE="L2020",
                         TILE_FORMAT="PNG")  # fmt: skip
    result = CliRunner().invoke(cli, ["info", f"GPKG:{gpkg}:L2020", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["count"] == 4


def test_info_takes_bundled_model_names(s2_pair):
    result = CliRunner().invoke(cli, ["info", "s2_change_swimdiff", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["model_type"] == "change_detection"
    result = CliRunner().invoke(
        cli, ["info", str(s2_pair[0]), "--model", "s2_change_swimdiff", "--json"]
    )
    assert result.exit_code == 0, result.output
    fit = json.loads(result.output)["fits_model"]
    assert fit["fits"] and "units_warning" not in fit  # real L1C digital numbers
    result = CliRunner().invoke(cli, ["info", "no_such_model"])
    assert result.exit_code == 2
    assert "'no_such_model' is neither a file nor a bundled model" in result.output
    assert "s2_change_swimdiff" in result.output  # the names it would take


def test_info_warns_when_a_raster_fits_the_bands_but_not_the_units(s2_pair, tmp_path):
    """Reflectance 0-1 has the right 13 bands for the bundled model: it fits, with a warning."""
    reflectance = as_reflectance(s2_pair[0], tmp_path / "reflectance.tif")
    result = CliRunner().invoke(
        cli, ["info", str(reflectance), "--model", "s2_change_swimdiff", "--json"]
    )
    assert result.exit_code == 0, result.output
    fit = json.loads(result.output)["fits_model"]
    assert fit["fits"] and fit["units_warning"].startswith(f"{reflectance}: pixel values look ")


def test_info_on_a_training_checkpoint_says_to_export_it(tmp_path):
    """torch.save writes a ZIP: ``info best.ckpt`` said "a ZIP without a Sentinel-2 product"."""
    import torch

    checkpoint = tmp_path / "best.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, checkpoint)
    result = CliRunner().invoke(cli, ["info", str(checkpoint)])
    assert result.exit_code == 1
    assert f"{checkpoint}: is a PyTorch checkpoint" in result.output
    assert "swimdiff-geo export" in result.output
