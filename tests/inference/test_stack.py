"""``stack``: a Sentinel-2 product as one GeoTIFF, as the engine reads it.

The products are the real sample pair in the download layout (tests/sentinel2_safe.py).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner

from cli.main import cli
from swimdiff_geo.inference.band_files import find_band_files
from swimdiff_geo.inference.change import ChangeOutputs, detect_change
from swimdiff_geo.inference.errors import InputError, OutputError
from swimdiff_geo.inference.stack import StackOptions, stack_bands
from tests.conftest import read_all_bands, write_s2_product
from tests.sentinel2_safe import BANDS, S2_CLOUD_MASK, write_jp2_rasterio


def test_new_product_stacks_to_what_the_engine_reads_offset_removed(s2_products, tmp_path):
    """A new-baseline product (digital numbers + 1000, zipped) becomes a uint16 GeoTIFF of its
    13 named bands on the B02 grid, holding what the engine reads from the product (offset
    removed, 20 m / 60 m bands resampled, rounded to whole numbers); the old product of the same
    pixels stacks to the same digital numbers but for the rounding of a few resampled ties."""
    stacked, summaries = {}, {}
    for name in ("b_zip", "b_old"):
        out = tmp_path / f"{name}.tif"
        summary = summaries[name] = stack_bands(str(s2_products[name]), str(out))
        engine, valid, source = read_all_bands(s2_products[name])
        with rasterio.open(out) as ds:
            assert ds.count == 13 and ds.dtypes == ("uint16",) * 13 and ds.nodata == 0
            assert ds.descriptions == BANDS
            stacked[name] = ds.read()
            assert ds.transform.to_gdal() == pytest.approx(source.grid.transform)
            assert ds.crs.to_wkt() == rasterio.crs.CRS.from_wkt(source.grid.crs_wkt).to_wkt()
            tags = ds.tags()
        assert valid.all()
        np.testing.assert_array_equal(stacked[name], np.rint(engine).astype(np.uint16))
        assert summary["bands"] == list(BANDS) and summary["pixels_raised_to_1"] == 0
    assert tags.get("processing_baseline") == "02.04" and "radiometric_offsets_added" not in tags
    # QGIS opens it in true colour: B04 / B03 / B02 stretched over their 2-98 % range
    style = (tmp_path / "b_old.qml").read_text()
    assert 'redBand="4" greenBand="3" blueBand="2"' in style
    low, high = np.percentile(stacked["b_old"][3], [2, 98])
    red = re.search(r"<redContrastEnhancement>\s*<minValue>([\d.]+)</minValue>\s*"
                    r"<maxValue>([\d.]+)</maxValue>", style)  # fmt: skip
    assert abs(float(red[1]) - low) < 0.1 * (high - low)
    assert abs(float(red[2]) - high) < 0.1 * (high - low)
    assert summaries["b_zip"]["processing_baseline"] == "05.09"
    assert summaries["b_zip"]["radiometric_offsets_added"] == dict.fromkeys(BANDS, -1000.0)
    difference = np.abs(stacked["b_zip"].astype(int) - stacked["b_old"])
    assert difference.max() <= 1 and np.mean(difference > 0) < 1e-4


def test_change_maps_from_stacks_match_the_maps_from_the_products(s2_products, tmp_path):
    """detect-change on the two stacks maps what it maps on the two products (an old one and
    a new-baseline one), so a stack can stand in for its product."""
    probabilities = {}
    for kind in ("products", "stacks"):
        a, b = s2_products["a"], s2_products["b_zip"]
        if kind == "stacks":
            a, b = tmp_path / "a.tif", tmp_path / "b.tif"
            stack_bands(str(s2_products["a"]), str(a))
            stack_bands(str(s2_products["b_zip"]), str(b))
        outputs = ChangeOutputs.in_dir(str(tmp_path / kind), polygons=False)
        summary = detect_change(str(a), str(b), outputs)
        assert summary["pixels"]["changed"] > 0
        with rasterio.open(outputs.probability) as ds:
            probabilities[kind] = ds.read(1)
    assert np.abs(probabilities["stacks"] - probabilities["products"]).max() < 0.01


def test_bands_extent_and_cloud_mask(s2_products, tmp_path):
    """--bands picks and orders bands by name; --extent cuts the same pixels out of the full
    stack; --mask-clouds writes nodata (0) where the product's cloud mask flags opaque clouds or
    cirrus, in every band, and nowhere else."""
    full = tmp_path / "full.tif"
    stack_bands(str(s2_products["b_zip"]), str(full))
    with rasterio.open(full) as ds:
        everything, transform = ds.read(), ds.transform

    rgb = tmp_path / "rgb.tif"
    stack_bands(str(s2_products["b_zip"]), str(rgb), StackOptions(bands=["b4", "B03", "B2"]))
    with rasterio.open(rgb) as ds:
        assert ds.descriptions == ("B04", "B03", "B02")
        np.testing.assert_array_equal(ds.read(), everything[[3, 2, 1]])

    # pixels 30..89 x 60..119 of the full stack, as an extent in its CRS (lon/lat)
    left, top = transform @ (30 + 0.25, 60 + 0.25)
    right, bottom = transform @ (90 - 0.25, 120 - 0.25)
    cut = tmp_path / "cut.tif"
    summary = stack_bands(
        str(s2_products["b_zip"]), str(cut), StackOptions(extent=(left, bottom, right, top))
    )
    with rasterio.open(cut) as ds:
        np.testing.assert_array_equal(ds.read(), everything[:, 60:120, 30:90])
        assert ds.transform == transform @ rasterio.Affine.translation(30, 60)
    assert (summary["width"], summary["height"]) == (60, 60)

    clouds = tmp_path / "clouds.tif"
    summary = stack_bands(str(s2_products["b_zip"]), str(clouds), StackOptions(mask_clouds=True))
    with rasterio.open(clouds) as ds:
        masked = ds.read()
    flagged = np.kron(S2_CLOUD_MASK[0] | S2_CLOUD_MASK[1], np.ones((6, 6), np.uint8)) == 1
    assert flagged.any() and summary["cloud_mask_applied"]
    assert (masked[:, flagged] == 0).all()
    np.testing.assert_array_equal(masked[:, ~flagged], everything[:, ~flagged])


def test_a_band_file_of_a_product_stands_for_the_product(s2_products, tmp_path):
    """One band file of a product (what QGIS opens from one; here inside the ZIP) stacks the
    whole product, as the product itself does."""
    band_file = find_band_files(str(s2_products["b_zip"])).files["B04"]
    assert band_file.startswith("/vsizip/") and band_file.endswith("_B04.jp2")
    messages: list[str] = []
    stack_bands(band_file, str(tmp_path / "from_band.tif"), log=messages.append)
    stack_bands(str(s2_products["b_zip"]), str(tmp_path / "from_product.tif"))
    assert f"info: {band_file} is one band file of {s2_products['b_zip']}" in messages[0]
    with rasterio.open(tmp_path / "from_band.tif") as a:
        with rasterio.open(tmp_path / "from_product.tif") as b:
            assert a.count == 13
            np.testing.assert_array_equal(a.read(), b.read())


def test_a_band_file_of_a_folder_of_band_files_stands_for_the_folder(s2_band_folder, tmp_path):
    """One file of a folder of band files (OSCD's imgs_1; a layer QGIS opened from it) stacks
    every band file of the folder, as the folder itself does; a band file alone in its folder
    is one raster and is refused."""
    band_file = next(s2_band_folder.glob("*_B04.jp2"))
    messages: list[str] = []
    stack_bands(str(band_file), str(tmp_path / "from_band.tif"), log=messages.append)
    stack_bands(str(s2_band_folder), str(tmp_path / "from_folder.tif"))
    assert messages[0] == (
        f"info: {band_file} is one band file of {s2_band_folder}: stacking every band file of "
        "the folder"
    )
    with rasterio.open(tmp_path / "from_band.tif") as a:
        with rasterio.open(tmp_path / "from_folder.tif") as b:
            assert a.count == 13 and list(a.descriptions) == list(BANDS)
            np.testing.assert_array_equal(a.read(), b.read())
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(band_file, alone)
    with pytest.raises(InputError, match="is one raster, not a Sentinel-2 product"):
        stack_bands(str(alone / band_file.name), str(tmp_path / "alone.tif"))
    assert not (tmp_path / "alone.tif").exists()


def test_pixels_darker_than_the_offset_stay_valid(s2_pair, tmp_path):
    """A new product's digital number below its +1000 (negative reflectance after the offset,
    which dark water can give) is written as 1, not as 0, which would make it nodata."""
    product = write_s2_product(tmp_path / "dark", s2_pair[1], date="20180205", baseline="05.09")
    files = find_band_files(str(product))
    b02 = Path(files.files["B02"])
    with rasterio.open(b02) as ds:
        data, transform, crs = ds.read(1), ds.transform.to_gdal(), ds.crs.to_wkt()
    data[:3, :4] = 400  # 400 - 1000 = -600
    write_jp2_rasterio(b02, data, transform, crs)
    out = tmp_path / "dark.tif"
    summary = stack_bands(str(product), str(out))
    assert summary["pixels_raised_to_1"] == 12
    with rasterio.open(out) as ds:
        written = ds.read(2)
    assert (written[:3, :4] == 1).all() and (written[3:, 4:] > 1).all()


def test_what_cannot_be_stacked_is_refused_and_nothing_is_written(s2_pair, s2_products, tmp_path):
    out = tmp_path / "out.tif"
    with pytest.raises(InputError, match="is one raster, not a Sentinel-2 product"):
        stack_bands(str(s2_pair[0]), str(out))
    with pytest.raises(InputError, match="missing.SAFE: does not exist"):
        stack_bands(str(tmp_path / "missing.SAFE"), str(out))
    with pytest.raises(OutputError, match="rgb.png: the stack is written as a Cloud-Optimized"):
        stack_bands(str(s2_products["a"]), str(tmp_path / "rgb.png"))
    with pytest.raises(InputError, match="has no band B13; its bands: B01, B02"):
        stack_bands(str(s2_products["a"]), str(out), StackOptions(bands=["B04", "B13"]))
    with pytest.raises(InputError, match="holds no pixel of the extent"):
        stack_bands(str(s2_products["a"]), str(out), StackOptions(extent=(0, 0, 1, 1)))
    assert list(tmp_path.iterdir()) == []
    out.write_bytes(b"keep me")
    with pytest.raises(OutputError, match="already exists"):
        stack_bands(str(s2_products["a"]), str(out))
    assert out.read_bytes() == b"keep me"


def test_cli_stack(s2_products, s2_pair, tmp_path):
    """``swimdiff-geo stack`` writes the GeoTIFF and, with --summary, the run's facts; bad input
    exits 1 naming the file, with nothing written."""
    runner = CliRunner()
    out, facts = tmp_path / "b.tif", tmp_path / "b.json"
    args = ["stack", str(s2_products["b_zip"]), str(out), "--bands", "B08,B04,B03"]
    result = runner.invoke(cli, args + ["--summary", str(facts)])
    assert result.exit_code == 0, result.output
    assert "3 bands (B08, B04, B03), 198x198 px, uint16" in result.output
    summary = json.loads(facts.read_text())
    assert summary["output"] == str(out.resolve()) and summary["bands"] == ["B08", "B04", "B03"]
    with rasterio.open(out) as ds:
        assert ds.descriptions == ("B08", "B04", "B03")
    assert not (tmp_path / "b.qml").exists() and summary["style"] is None  # no B02: no RGB
    # over a full stack with its true-colour style: the stale style goes with the old stack
    full = runner.invoke(cli, ["stack", str(s2_products["b_zip"]), str(out), "--overwrite"])
    assert full.exit_code == 0, full.output
    assert (tmp_path / "b.qml").exists()
    assert runner.invoke(cli, args + ["--overwrite"]).exit_code == 0
    assert not (tmp_path / "b.qml").exists()

    result = runner.invoke(cli, ["stack", str(s2_pair[0]), str(tmp_path / "no.tif")])
    assert result.exit_code == 1
    assert f"{s2_pair[0]}: is one raster, not a Sentinel-2 product" in result.output
    assert not (tmp_path / "no.tif").exists()
