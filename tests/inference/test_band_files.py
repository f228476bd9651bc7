"""Sentinel-2 products (SAFE folder, ZIP, granule) and folders of band files as inputs.

The products are built from the real sample pair in the download layout (tests/sentinel2_safe.py):
one lossless JPEG 2000 per band at its native resolution, with the product metadata.
"""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner
from rasterio.crs import CRS
from rasterio.transform import Affine

from cli.main import cli
from swimdiff_geo.inference.band_files import find_band_files, product_of_band_file
from swimdiff_geo.inference.change import ChangeOutputs, detect_change
from swimdiff_geo.inference.errors import InputError
from swimdiff_geo.inference.inputs import open_input
from swimdiff_geo.inference.io import Window
from swimdiff_geo.inference.io_rasterio import RasterioBackend
from tests.conftest import read_all_bands, write_s2_product
from tests.sentinel2_safe import BANDS, RESOLUTION_M, S2_CLOUD_MASK


def _stack(path: Path) -> tuple[np.ndarray, tuple[float, ...], str]:
    with rasterio.open(path) as ds:
        return ds.read(), ds.transform.to_gdal(), ds.crs.to_wkt()


def test_safe_product_reads_13_named_bands_on_the_10m_grid(s2_products, s2_pair):
    data, valid, source = read_all_bands(s2_products["a"])
    stack, transform, _ = _stack(s2_pair[0])
    assert source.band_descriptions == BANDS
    assert (source.grid.width, source.grid.height) == (198, 198)  # 200 px cut to a multiple of 6
    assert np.allclose(source.grid.transform, transform)
    assert valid.all()
    for i, band in enumerate(BANDS):
        if RESOLUTION_M[band] == 10:  # the 10 m files are read as they are
            assert np.array_equal(data[i], stack[i, :198, :198].astype(np.float32))
        else:  # coarser ones resampled bilinearly: near the 10 m original, in the right band
            error = np.abs(data[i] - stack[i, :198, :198]).mean()
            others = [np.abs(data[i] - stack[j, :198, :198]).mean() for j in range(13) if j != i]
            assert error < 0.5 * min(others), band


def test_new_baseline_offset_is_removed_so_old_and_new_products_read_alike(s2_products):
    old, _, _ = read_all_bands(s2_products["b_old"])
    new, _, source = read_all_bands(s2_products["b_new"])
    zipped, _, zipped_source = read_all_bands(s2_products["b_zip"])
    # equal to the digital number: the bilinear warp of the 20 m and 60 m files rounds to
    # integers, (x + 1000) rounds like x but for a few ties
    assert np.abs(new - old).max() <= 1 and np.mean(new != old) < 1e-4
    assert np.array_equal(zipped, new)
    assert source.dtype == "float32" and zipped_source.path == str(s2_products["b_zip"])
    files = find_band_files(str(s2_products["b_new"]))
    assert files.processing_baseline == "05.09"
    assert files.offsets == dict.fromkeys(BANDS, -1000.0)
    assert "QI_DATA" not in " ".join(files.files.values())


def test_detect_change_on_products_equals_the_run_on_stacked_old_products(s2_products, tmp_path):
    """An old (2015) product against a new-baseline one (the 2018 pixels + 1000, as ESA delivers
    them since 2022) maps what two old products map; stacked by hand, without the metadata, the
    new product's +1000 changes the map beyond recognition (the bundled model finds no change)."""
    runner = CliRunner()
    old = tmp_path / "old"
    new = tmp_path / "new"
    for out, b in ((old, s2_products["b_old"]), (new, s2_products["b_zip"])):
        args = ["detect-change", str(s2_products["a"]), str(b), "-o", str(out)]
        result = runner.invoke(cli, args)
        assert result.exit_code == 0, result.output
    assert "processing baseline 05.09" in result.output and "-1000" in result.output
    with rasterio.open(old / "change_probability.tif") as p_old:
        with rasterio.open(new / "change_probability.tif") as p_new:
            assert p_new.shape == (198, 198) and p_new.transform == p_old.transform
            assert np.abs(p_old.read(1) - p_new.read(1)).max() < 0.01
    summary = json.loads((new / "summary.json").read_text())
    assert summary["inputs"]["image_b"] == str(s2_products["b_zip"])

    # the same new product stacked by hand (what a user without the reader would do)
    data, _, source = read_all_bands(s2_products["b_old"])
    stacked = tmp_path / "b_new_stacked.tif"
    profile = dict(driver="GTiff", width=198, height=198, count=13, dtype="uint16",
                   crs=CRS.from_wkt(source.grid.crs_wkt),
                   transform=Affine.from_gdal(*source.grid.transform))  # fmt: skip
    with rasterio.open(stacked, "w", **profile) as dst:
        dst.write((data + 1000).astype(np.uint16))
        dst.descriptions = BANDS
    by_hand = detect_change(
        str(s2_products["a"]), str(stacked), ChangeOutputs.in_dir(str(tmp_path / "by_hand"))
    )
    assert summary["changed_area_m2"] > 0
    assert (
        abs(by_hand["changed_area_m2"] - summary["changed_area_m2"])
        > 0.5 * summary["changed_area_m2"]
    )
    # ... which the engine recognises by B10 (cirrus), dark in every image before the offset
    assert not [w for w in summary["warnings"] if "stacked without removing" in w]
    assert [w for w in by_hand["warnings"] if w.startswith(f"warning: {stacked}: its B10")]
    assert not [w for w in by_hand["warnings"] if "thin cirrus" in w]  # the offset, not cirrus
    for path, warns in ((stacked, True), (s2_products["b_old"], False)):
        result = runner.invoke(cli, ["info", str(path), "--json", "-m", "s2_change_swimdiff"])
        assert ("baseline_warning" in json.loads(result.output)["fits_model"]) == warns


def test_nodata_of_the_product_is_nodata_in_the_outputs(s2_products, tmp_path):
    """Sentinel-2 marks pixels outside the swath 0 in every band; they are nodata, also where
    the 20 m and 60 m bands are resampled across the edge."""
    edge = tmp_path / "edge" / s2_products["b_old"].name
    shutil.copytree(s2_products["b_old"], edge)
    lowest = {}  # per band, the lowest digital number left inside the swath
    for jp2 in sorted(edge.rglob("IMG_DATA/*.jp2")):
        with rasterio.open(jp2) as ds:
            data, profile = ds.read(1), ds.profile
        data[:, : data.shape[1] // 3] = 0  # the left third outside the swath
        lowest[jp2.stem[-3:]] = data[:, data.shape[1] // 3 :].min()
        with rasterio.open(jp2, "w", **profile | {"QUALITY": 100, "REVERSIBLE": "YES"}) as dst:
            dst.write(data, 1)
    data, valid, _ = read_all_bands(edge)
    assert not valid[:, :66].any() and valid[:, 66:].all()
    for i, band in enumerate(BANDS):  # no zero blended into a valid pixel across the edge
        assert data[i][valid].min() >= lowest[band] - 1, band
    ten_m = open_input(RasterioBackend(), str(edge))  # a 10 m band alone: the product's NODATA
    _, valid_b02 = ten_m.read(Window(0, 0, 198, 198), [2])
    ten_m.close()
    assert np.array_equal(valid_b02, valid)

    outputs = ChangeOutputs.in_dir(str(tmp_path / "out"))
    summary = detect_change(str(s2_products["a"]), str(edge), outputs)
    with rasterio.open(outputs.probability) as ds:
        probability = ds.read(1)
    assert (probability[:, :66] == -1).all()
    assert (probability[:, 66:] >= 0).all()
    assert summary["pixels"]["nodata"] == 66 * 198


def test_folder_of_band_files_and_granule_folder(s2_products, tmp_path):
    """OSCD's layout (a folder of ..._B01.tif files) and one granule of a SAFE read as the
    product does; a granule without its product warns that no offset could be removed."""
    reference, _, _ = read_all_bands(s2_products["a"])
    folder = tmp_path / "imgs_1"
    folder.mkdir()
    for jp2 in s2_products["a"].rglob("IMG_DATA/*.jp2"):
        with rasterio.open(jp2) as ds:
            profile = ds.profile | {"driver": "GTiff"}
            profile.pop("QUALITY", None)
            with rasterio.open(folder / f"S2A_OPER_MSI_L1C_{jp2.stem}.tif", "w", **profile) as dst:
                dst.write(ds.read())
    (folder / "dates.txt").write_text("not a raster\n")
    from_folder, _, source = read_all_bands(folder)
    assert source.band_descriptions == BANDS
    # a granule inside its product: the product's metadata (the offset) found two levels up
    granule = next((s2_products["b_new"] / "GRANULE").iterdir())
    from_granule, _, _ = read_all_bands(granule)
    assert np.array_equal(from_granule, read_all_bands(s2_products["b_new"])[0])
    # a granule on its own: read as it is, with a warning that no offset could be removed
    alone = tmp_path / granule.name
    shutil.copytree(granule, alone)
    outputs = ChangeOutputs.in_dir(str(tmp_path / "out"))
    summary = detect_change(str(s2_products["a"]), str(alone), outputs)
    assert any(
        w.startswith(f"warning: {alone}: no product metadata") and "give the whole product" in w
        for w in summary["warnings"]
    )
    # without the product's NODATA value GDAL warps through another path (an alpha band), which
    # rounds a few resampled pixels the other way
    assert np.abs(from_folder - reference).max() <= 1 and np.mean(from_folder != reference) < 1e-3


def test_l2a_product_takes_the_finest_file_per_band_and_lacks_b10(s2_pair, tmp_path):
    product = write_s2_product(tmp_path, s2_pair[0], level="L2A", baseline="05.09")
    files = find_band_files(str(product))
    assert files.kind == "Sentinel-2 L2A product"
    assert files.files["B02"].endswith("_B02_10m.jp2") and "B10" not in files.files
    assert files.offsets["B02"] == -1000.0
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["detect-change", str(product), str(product), "-o", str(out)])
    assert result.exit_code != 0
    assert str(product) in result.output and "lacks band B10" in result.output
    assert not out.exists() or not list(out.iterdir())


def test_unreadable_folders_and_products_are_named_with_the_reason(
    s2_products, s2_band_folder, tmp_path
):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("x")
    with pytest.raises(InputError, match="folder without band files"):
        find_band_files(str(empty))

    twice = tmp_path / "twice"
    twice.mkdir()
    jp2 = next(s2_products["a"].rglob("IMG_DATA/*_B02.jp2"))
    shutil.copy(jp2, twice / "x_B02.jp2")
    shutil.copy(jp2, twice / "y_B2.jp2")
    with pytest.raises(InputError, match=r"two files for band B02 \(x_B02.jp2, y_B2.jp2\)"):
        find_band_files(str(twice))

    multi = tmp_path / "multi.SAFE"
    shutil.copytree(s2_products["a"], multi)
    granule = next((multi / "GRANULE").iterdir())
    shutil.copytree(granule, granule.with_name(granule.name + "_2"))
    with pytest.raises(InputError, match="holds 2 granules.*give one granule's folder"):
        find_band_files(str(multi))

    not_s2 = tmp_path / "other.zip"
    with zipfile.ZipFile(not_s2, "w") as archive:
        archive.writestr("readme.txt", "no product here")
    with pytest.raises(InputError, match="ZIP without a Sentinel-2 product"):
        find_band_files(str(not_s2))

    band = next(s2_products["a"].rglob("IMG_DATA/*_B04.jp2"))  # one band file of a product
    result = CliRunner().invoke(cli, ["info", str(band), "-m", "s2_change_swimdiff", "--json"])
    why = json.loads(result.output)["fits_model"]["why"]
    assert why.startswith(f"is one band file of the Sentinel-2 product {s2_products['a']};")
    band = next(s2_band_folder.glob("*_B04.jp2"))  # one band file of a folder of band files
    result = CliRunner().invoke(cli, ["info", str(band), "-m", "s2_change_swimdiff", "--json"])
    why = json.loads(result.output)["fits_model"]["why"]
    assert why.startswith(f"is one of the band files in {s2_band_folder}; the model takes 13")

    out = tmp_path / "out"
    result = CliRunner().invoke(
        cli, ["detect-change", str(empty), str(s2_products["a"]), "-o", str(out)]
    )
    assert result.exit_code != 0 and f"{empty}: is a folder without band files" in result.output
    assert not out.exists() or not list(out.iterdir())


def test_info_describes_a_product_and_its_fit_to_the_model(s2_products):
    result = CliRunner().invoke(cli, ["info", str(s2_products["b_zip"]), "--json", "--model",
                                      "s2_change_swimdiff"])  # fmt: skip
    assert result.exit_code == 0, result.output
    facts = json.loads(result.output)
    assert facts["product"] == "Sentinel-2 L1C product"
    assert facts["processing_baseline"] == "05.09"
    assert list(facts["band_files"]) == list(BANDS)
    assert facts["radiometric_offsets"]["B8A"] == -1000.0
    assert facts["cloud_mask"].endswith("/QI_DATA/MSK_CLASSI_B00.jp2")
    assert (facts["width"], facts["height"]) == (198, 198)
    assert facts["fits_model"]["fits"] is True
    assert "units_warning" not in facts["fits_model"]


def test_qgis_layer_of_a_product_subdataset_stands_for_the_whole_product(s2_products):
    """QGIS loads a product as GDAL subdatasets (its 10 m bands, its 20 m bands, ...); the
    engine reads all bands of the product behind such a layer, zipped or not."""
    safe, archive = s2_products["b_new"], s2_products["b_zip"]
    from_folder = find_band_files(str(safe))
    layer = find_band_files(f"SENTINEL2_L1C:{safe}/MTD_MSIL1C.xml:10m:EPSG_4326")
    assert layer.files == from_folder.files and layer.offsets == from_folder.offsets
    zipped = find_band_files(
        f"SENTINEL2_L1C:/vsizip/{archive}/{safe.name}/MTD_MSIL1C.xml:20m:EPSG_4326"
    )
    assert zipped.path == str(archive) and list(zipped.files) == list(BANDS)
    assert zipped.files["B02"].startswith(f"/vsizip/{archive}/")
    # a layer of one band file inside the ZIP: the error names the ZIP to give instead
    assert product_of_band_file(zipped.files["B04"]) == str(archive)


def test_mask_clouds_makes_flagged_pixels_nodata(s2_products, tmp_path):
    """--mask-clouds: the 10 m pixels of the 60 m pixels the product flags as opaque clouds or
    cirrus become nodata, snow does not; without the option nothing is masked, and an input
    without a cloud mask says so."""
    runner = CliRunner()
    runs = {}
    for name, extra in (("masked", ["--mask-clouds"]), ("plain", [])):
        out = tmp_path / name
        args = ["detect-change", str(s2_products["a"]), str(s2_products["b_zip"]), "-o", str(out)]
        result = runner.invoke(cli, args + extra)
        assert result.exit_code == 0, result.output
        with rasterio.open(out / "change_probability.tif") as ds:
            runs[name] = ds.read(1) == -1  # nodata
    assert not runs["plain"].any()
    flagged = np.kron(S2_CLOUD_MASK[0] | S2_CLOUD_MASK[1], np.ones((6, 6), np.uint8)) == 1
    masked = runs["masked"]
    np.testing.assert_array_equal(masked, flagged)  # the 10 m pixels of flagged 60 m pixels

    # date A is an old product (before baseline 04.00): no raster mask to apply
    result = runner.invoke(cli, ["detect-change", str(s2_products["a"]), str(s2_products["b_zip"]),
                                 "-o", str(tmp_path / "again"), "--mask-clouds"])  # fmt: skip
    assert result.exit_code == 0
    assert f"warning: {s2_products['a']}: no cloud mask to apply" in result.output
    assert f"{s2_products['b_zip']}: pixels its cloud mask flags" in result.output
