"""Sentinel-2 products read through GdalBackend (QGIS's GDAL), as through rasterio in the CLI.

The products are built from the real sample pair in the download layout (tests/sentinel2_safe.py),
written here with GDAL's own JPEG 2000 driver.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from osgeo import gdal

from swimdiff_geo.inference.change import ChangeOptions, ChangeOutputs, detect_change
from swimdiff_geo.inference.inputs import open_input
from swimdiff_geo.inference.io import Window
from swimdiff_geo.inference.io_gdal import GdalBackend
from tests.sentinel2_safe import BANDS, S2_CLOUD_MASK, write_safe


def _write_jp2(path: Path, data: np.ndarray, transform: tuple[float, ...], crs_wkt: str) -> None:
    data = data if data.ndim == 3 else data[None]
    kind = gdal.GDT_Byte if data.dtype == np.uint8 else gdal.GDT_UInt16
    mem = gdal.GetDriverByName("MEM").Create("", data.shape[2], data.shape[1], data.shape[0], kind)
    mem.SetGeoTransform(transform)
    mem.SetProjection(crs_wkt)
    for i, band in enumerate(data, start=1):
        mem.GetRasterBand(i).WriteArray(band)
    out = gdal.GetDriverByName("JP2OpenJPEG").CreateCopy(
        str(path), mem, options=["QUALITY=100", "REVERSIBLE=YES"]
    )
    assert out is not None, gdal.GetLastErrorMsg()
    out = None


def _safe(folder: Path, image: str, **kwargs) -> Path:
    ds = gdal.Open(image)
    stack = ds.ReadAsArray()
    return write_safe(folder, stack, ds.GetGeoTransform(), ds.GetProjection(), _write_jp2, **kwargs)


@pytest.fixture(scope="module")
def products(s2_pair, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("s2_products_gdal")
    return {
        "a": _safe(root / "a", s2_pair[0]),
        "b_old": _safe(root / "b_old", s2_pair[1], date="20180205"),
        "b_new": _safe(
            root / "b_new", s2_pair[1], date="20180205", baseline="05.09", cloud_mask=S2_CLOUD_MASK
        ),
    }


def _read_all(path: Path) -> tuple[np.ndarray, object]:
    source = open_input(GdalBackend(), str(path))
    try:
        grid = source.grid
        data, valid = source.read(Window(0, 0, grid.width, grid.height), range(1, 14))
        assert valid.all()
        return data, source
    finally:
        source.close()


def test_gdal_backend_reads_a_product_as_13_named_bands(products, s2_pair):
    data, source = _read_all(products["a"])
    sample = gdal.Open(s2_pair[0]).ReadAsArray()[:, :198, :198]
    assert source.band_descriptions == BANDS and source.grid.width == 198
    for band in ("B02", "B03", "B04", "B08"):  # the 10 m files, read as they are
        assert np.array_equal(data[BANDS.index(band)], sample[BANDS.index(band)])
    new, _ = _read_all(products["b_new"])
    old, _ = _read_all(products["b_old"])
    assert np.abs(new - old).max() <= 1 and np.mean(new != old) < 1e-4  # offset removed


def test_engine_on_gdal_matches_the_cli_on_products(products, main_cli, tmp_path):
    """The QGIS backend maps a pair of products as the CLI (rasterio) does, clouds masked."""
    cli_out = tmp_path / "cli"
    result = main_cli("detect-change", str(products["a"]), str(products["b_new"]),
                      "-o", str(cli_out), "-q", "--mask-clouds")  # fmt: skip
    assert result.returncode == 0, result.stderr
    outputs = ChangeOutputs.in_dir(str(tmp_path / "gdal"))
    messages: list[str] = []
    summary = detect_change(
        str(products["a"]), str(products["b_new"]), outputs, ChangeOptions(mask_clouds=True),
        backend=GdalBackend(), log=messages.append,
    )  # fmt: skip
    assert any("processing baseline 05.09" in m and "-1000" in m for m in messages)
    expected = gdal.Open(str(cli_out / "change_probability.tif")).ReadAsArray()
    probability = gdal.Open(outputs.probability).ReadAsArray()
    assert probability.shape == (198, 198)
    assert np.abs(probability - expected).max() < 0.01
    cli_summary = json.loads((cli_out / "summary.json").read_text())
    assert summary["pixels"] == cli_summary["pixels"]
    clouds = np.kron(S2_CLOUD_MASK[0] | S2_CLOUD_MASK[1], np.ones((6, 6), np.uint8)) == 1
    np.testing.assert_array_equal(probability == -1, clouds)


def test_stackbands_on_a_band_file_layer_writes_what_the_cli_writes(
    products, provider, main_cli, tmp_path
):
    """Stack Sentinel-2 bands, given a layer of one band file (what dragging a product's JPEG
    2000 into QGIS gives), stacks the whole new-baseline product on GDAL as `swimdiff-geo
    stack` does on rasterio: 13 named uint16 bands, offset removed, clouds masked."""
    import processing
    from qgis.core import (
        QgsMultiBandColorRenderer,
        QgsProcessingContext,
        QgsProcessingFeedback,
        QgsRasterLayer,
    )

    cli_out = tmp_path / "cli.tif"
    result = main_cli("stack", str(products["b_new"]), str(cli_out), "-q", "--mask-clouds")
    assert result.returncode == 0, result.stderr
    band_file = next(products["b_new"].glob("GRANULE/*/IMG_DATA/*_B04.jp2"))
    out = tmp_path / "qgis.tif"
    results = processing.run(
        "swimdiffgeo:stackbands",
        {"INPUT": str(band_file), "MASK_CLOUDS": True, "OUTPUT": str(out)},
        context=QgsProcessingContext(),
        feedback=QgsProcessingFeedback(),
    )
    assert results["OUTPUT"] == str(out)
    assert json.loads(results["SUMMARY"])["processing_baseline"] == "05.09"
    ds, expected = gdal.Open(str(out)), gdal.Open(str(cli_out))
    assert ds.RasterCount == 13 and ds.GetRasterBand(1).DataType == gdal.GDT_UInt16
    assert [ds.GetRasterBand(i).GetDescription() for i in range(1, 14)] == list(BANDS)
    stacked, reference = ds.ReadAsArray().astype(int), expected.ReadAsArray().astype(int)
    assert np.abs(stacked - reference).max() <= 1 and np.mean(stacked != reference) < 1e-4
    clouds = np.kron(S2_CLOUD_MASK[0] | S2_CLOUD_MASK[1], np.ones((6, 6), np.uint8)) == 1
    assert (stacked[:, clouds] == 0).all() and (stacked[:, ~clouds] > 0).all()
    layer = QgsRasterLayer(str(out), "stack")  # opens in true colour, from the .qml beside it
    assert isinstance(layer.renderer(), QgsMultiBandColorRenderer)
    renderer = layer.renderer()
    assert (renderer.redBand(), renderer.greenBand(), renderer.blueBand()) == (4, 3, 2)


def test_stackbands_on_a_layer_of_a_folder_of_band_files_stacks_the_folder(
    products, provider, main_cli, tmp_path
):
    """A folder of band files cannot be a layer; one of its files can, and stands for the
    folder: the algorithm stacks all 13 files, as `swimdiff-geo stack FOLDER` does."""
    import processing
    from qgis.core import QgsProcessingContext, QgsProcessingFeedback

    folder = tmp_path / "imgs_1"
    folder.mkdir()
    for jp2 in products["a"].glob("GRANULE/*/IMG_DATA/*.jp2"):
        shutil.copy(jp2, folder)
    cli_out = tmp_path / "cli.tif"
    result = main_cli("stack", str(folder), str(cli_out), "-q")
    assert result.returncode == 0, result.stderr
    out = tmp_path / "qgis.tif"
    processing.run(
        "swimdiffgeo:stackbands",
        {"INPUT": str(next(folder.glob("*_B11.jp2"))), "OUTPUT": str(out)},
        context=QgsProcessingContext(),
        feedback=QgsProcessingFeedback(),
    )
    ds = gdal.Open(str(out))
    assert ds.RasterCount == 13
    assert [ds.GetRasterBand(i).GetDescription() for i in range(1, 14)] == list(BANDS)
    stacked = ds.ReadAsArray().astype(int)
    reference = gdal.Open(str(cli_out)).ReadAsArray().astype(int)
    assert np.abs(stacked - reference).max() <= 1 and np.mean(stacked != reference) < 1e-4
