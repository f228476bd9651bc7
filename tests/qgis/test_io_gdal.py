"""GdalBackend (swimdiff_geo.inference.io_gdal) against what GDAL itself reports.

Runs in QGIS's Python, whose osgeo.gdal is the one the plugin uses. Rasters are either the
Sentinel-2 sample or small ones written here with GDAL so that every expected value is known.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from osgeo import gdal, ogr, osr

from swimdiff_geo.inference.errors import InputError, OutputError
from swimdiff_geo.inference.io import Grid, PolygonLayer, RasterSpec, Window
from swimdiff_geo.inference.io_gdal import GdalBackend

UTM33 = 32633


def _wkt(epsg: int) -> str:
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(epsg)
    return srs.ExportToWkt()


def _write_tif(
    path: str,
    data: np.ndarray,
    transform: tuple[float, ...] = (500000.0, 10.0, 0.0, 5000000.0, 0.0, -10.0),
    epsg: int | None = UTM33,
    nodata: float | None = None,
    alpha: np.ndarray | None = None,
    mask: np.ndarray | None = None,
) -> str:
    """A GeoTIFF holding ``data`` (bands, rows, cols), optionally with alpha band or mask."""
    bands, rows, cols = data.shape
    gdal_type = {np.dtype("uint8"): gdal.GDT_Byte, np.dtype("uint16"): gdal.GDT_UInt16,
                 np.dtype("float32"): gdal.GDT_Float32}[data.dtype]  # fmt: skip
    count = bands + (1 if alpha is not None else 0)
    ds = gdal.GetDriverByName("GTiff").Create(path, cols, rows, count, gdal_type)
    ds.SetGeoTransform(transform)
    if epsg is not None:
        ds.SetProjection(_wkt(epsg))
    for i in range(bands):
        band = ds.GetRasterBand(i + 1)
        band.WriteArray(data[i])
        if nodata is not None:
            band.SetNoDataValue(nodata)
    if alpha is not None:
        band = ds.GetRasterBand(count)
        band.SetColorInterpretation(gdal.GCI_AlphaBand)
        band.WriteArray(alpha.astype(data.dtype))
    if mask is not None:
        ds.CreateMaskBand(gdal.GMF_PER_DATASET)
        ds.GetRasterBand(1).GetMaskBand().WriteArray(mask.astype(np.uint8) * 255)
    ds = None
    return path


@pytest.fixture
def backend() -> GdalBackend:
    return GdalBackend()


@pytest.fixture
def ramp(tmp_path) -> tuple[str, np.ndarray]:
    """A 3-band uint16 raster with distinct values, nodata 0 in a 4x5 corner block."""
    data = (np.arange(3 * 40 * 50).reshape(3, 40, 50) % 4000 + 1).astype(np.uint16)
    data[:, :4, :5] = 0
    return _write_tif(str(tmp_path / "ramp.tif"), data, nodata=0), data


# -- reading ----------------------------------------------------------------------------------
def test_open_matches_gdal_on_the_sentinel2_sample(backend, s2_pair):
    path = s2_pair[0]
    source = backend.open(path)
    ds = gdal.Open(path)
    try:
        assert (source.grid.width, source.grid.height) == (ds.RasterXSize, ds.RasterYSize)
        assert source.grid.transform == pytest.approx(ds.GetGeoTransform(), abs=0)
        assert backend.same_crs(source.grid.crs_wkt, ds.GetProjection())
        assert source.count == ds.RasterCount == 13
        assert source.dtype == "uint16"
        window = Window(col_off=11, row_off=7, width=37, height=29)
        data, valid = source.read(window, [4, 3, 2])
        assert data.dtype == np.float32 and data.shape == (3, 29, 37)
        for i, band in enumerate([4, 3, 2]):
            expected = ds.GetRasterBand(band).ReadAsArray(11, 7, 37, 29)
            np.testing.assert_array_equal(data[i], expected.astype(np.float32))
        expected_valid = np.ones((29, 37), bool)
        for band in (4, 3, 2):
            expected_valid &= ds.GetRasterBand(band).GetMaskBand().ReadAsArray(11, 7, 37, 29) > 0
        np.testing.assert_array_equal(valid, expected_valid)
    finally:
        source.close()
        ds = None


def test_declared_nodata_is_invalid(backend, ramp):
    path, data = ramp
    source = backend.open(path)
    values, valid = source.read(Window(0, 0, 50, 40), [1, 3])
    source.close()
    np.testing.assert_array_equal(values, data[[0, 2]].astype(np.float32))
    np.testing.assert_array_equal(valid, data[0] != 0)
    assert source.nodata == 0


def test_alpha_band_and_internal_mask_are_invalid(backend, tmp_path):
    rgb = np.full((3, 20, 30), 100, np.uint8)
    alpha = np.full((20, 30), 255, np.uint8)
    alpha[5:9, 10:20] = 0
    rgba = backend.open(_write_tif(str(tmp_path / "rgba.tif"), rgb, alpha=alpha))
    _, valid = rgba.read(Window(0, 0, 30, 20), [1, 2, 3])
    rgba.close()
    np.testing.assert_array_equal(valid, alpha > 0)

    mask = np.ones((20, 30), bool)
    mask[:, :7] = False
    masked = backend.open(_write_tif(str(tmp_path / "masked.tif"), rgb, mask=mask))
    _, valid = masked.read(Window(0, 0, 30, 20), [2])
    masked.close()
    np.testing.assert_array_equal(valid, mask)


@pytest.mark.parametrize("nodata", [0, None], ids=["declared-nodata", "no-nodata-alpha"])
def test_open_on_grid_whole_pixel_shift_is_exact(backend, tmp_path, nodata):
    """Bilinear at whole-pixel offsets samples source pixel centres: values are unchanged."""
    data = (np.arange(40 * 50).reshape(1, 40, 50) % 4000 + 1).astype(np.uint16)
    if nodata is not None:
        data[:, 10:12, 20:23] = 0
    path = _write_tif(str(tmp_path / "src.tif"), data, nodata=nodata)
    # 3 columns left of and 2 rows below the source origin, reaching past its right edge.
    grid = Grid(60, 30, (500000.0 - 30.0, 10.0, 0.0, 5000000.0 - 20.0, 0.0, -10.0), _wkt(UTM33))
    source = backend.open_on_grid(path, grid)
    assert source.grid == grid and source.count == 1
    values, valid = source.read(Window(0, 0, 60, 30), [1])
    source.close()
    expected = np.zeros((30, 60), np.float32)
    inside = np.zeros((30, 60), bool)
    expected[:, 3:53] = data[0, 2:32, :]
    inside[:, 3:53] = True
    if nodata is not None:
        inside &= expected != 0
    np.testing.assert_array_equal(valid, inside)
    np.testing.assert_array_equal(values[0][inside], expected[inside])


def test_open_on_grid_reprojects_constant_raster(backend, tmp_path):
    """A constant UTM raster warped to Web Mercator: valid pixels keep the constant and cover
    the transformed footprint, nothing outside it."""
    data = np.full((1, 60, 80), 1234, np.uint16)
    path = _write_tif(str(tmp_path / "const.tif"), data)
    src_bounds = (500000.0, 5000000.0 - 600.0, 500000.0 + 800.0, 5000000.0)
    left, bottom, right, top = backend.transform_bounds(src_bounds, _wkt(UTM33), _wkt(3857))
    pad = 200.0
    grid = Grid(
        int((right - left + 2 * pad) // 10),
        int((top - bottom + 2 * pad) // 10),
        (left - pad, 10.0, 0.0, top + pad, 0.0, -10.0),
        _wkt(3857),
    )
    source = backend.open_on_grid(path, grid)
    values, valid = source.read(Window(0, 0, grid.width, grid.height), [1])
    source.close()
    assert valid.any() and not valid.all()
    np.testing.assert_array_equal(values[0][valid], 1234.0)
    # Pixels 5 px inside the padded frame are well outside the footprint.
    assert not valid[:15, :].any() and not valid[-15:, :].any()
    # The centre of the footprint is valid.
    assert valid[grid.height // 2, grid.width // 2]


def test_crs_helpers_agree_with_osr(backend):
    utm = _wkt(UTM33)
    assert backend.same_crs(utm, "EPSG:32633")
    assert not backend.same_crs(utm, _wkt(32634))
    assert backend.crs_name(utm) == "EPSG:32633"
    assert backend.crs_name(None) is None
    projected = backend.crs_info(utm)
    assert not projected.is_geographic and projected.linear_unit_m == 1.0
    geographic = backend.crs_info(_wkt(4326))
    assert geographic.is_geographic and geographic.semi_major_m == 6378137.0

    bounds = (500000.0, 4990000.0, 510000.0, 5000000.0)
    left, bottom, right, top = backend.transform_bounds(bounds, utm, _wkt(4326))
    src, dst = osr.SpatialReference(), osr.SpatialReference()
    src.ImportFromEPSG(UTM33)
    dst.ImportFromEPSG(4326)
    dst.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    transform = osr.CoordinateTransformation(src, dst)
    for x in (bounds[0], bounds[2]):
        for y in (bounds[1], bounds[3]):
            lon, lat, _ = transform.TransformPoint(x, y)
            assert left <= lon <= right and bottom <= lat <= top


# -- writing ----------------------------------------------------------------------------------
def test_create_and_to_cog_keep_everything_gdal_reads(backend, tmp_path):
    grid = Grid(1100, 700, (300000.0, 30.0, 0.0, 9000000.0, 0.0, -30.0), _wkt(32618))
    spec = RasterSpec(
        grid=grid,
        count=1,
        dtype="uint8",
        nodata=255,
        band_descriptions=["land cover"],
        color_table={0: (0, 0, 255, 255), 1: (0, 170, 0, 255), 2: (255, 0, 0, 255)},
        category_names=["water", "forest", "urban"],
        tags={"model": "test.onnx"},
        overview_resampling="nearest",
    )
    classes = (np.add.outer(np.arange(700) // 70, np.arange(1100) // 110) % 3).astype(np.uint8)
    classes[:10, :10] = 255
    tmp = str(tmp_path / "blocks.tif")
    sink = backend.create(tmp, spec)
    for row in range(0, 700, 256):  # block rows, as the engine writes them
        height = min(256, 700 - row)
        sink.write(classes[None, row : row + height], Window(0, row, 1100, height))
    np.testing.assert_array_equal(sink.read(Window(100, 200, 300, 150)), classes[200:350, 100:400])
    sink.close()

    final = str(tmp_path / "landcover.tif")
    backend.to_cog(tmp, final, spec)
    ds = gdal.Open(final)
    band = ds.GetRasterBand(1)
    try:
        np.testing.assert_array_equal(band.ReadAsArray(), classes)
        assert ds.GetMetadata("IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        assert ds.GetMetadataItem("COMPRESSION", "IMAGE_STRUCTURE") == "DEFLATE"
        assert band.GetBlockSize() == [512, 512]
        assert band.GetOverviewCount() >= 1
        # Nearest overviews hold class ids only, never averages of them.
        assert set(np.unique(band.GetOverview(0).ReadAsArray())) <= {0, 1, 2, 255}
        assert ds.GetGeoTransform() == grid.transform
        assert backend.same_crs(ds.GetProjection(), grid.crs_wkt)
        assert band.GetNoDataValue() == 255
        assert band.GetDescription() == "land cover"
        table = band.GetColorTable()
        assert [table.GetColorEntry(i) for i in range(3)] == [
            (0, 0, 255, 255), (0, 170, 0, 255), (255, 0, 0, 255)
        ]  # fmt: skip
        assert band.GetCategoryNames() == ["water", "forest", "urban"]
        assert ds.GetMetadataItem("model") == "test.onnx"
    finally:
        band = None
        ds = None
    facts = backend.describe(final)
    assert facts["width"] == 1100 and facts["height"] == 700 and facts["crs"] == "EPSG:32618"
    assert facts["dtypes"] == ["uint8"] and facts["nodata"] == 255
    assert facts["block_shapes"] == [[512, 512]] and len(facts["overviews"]) >= 1


def test_float_output_with_average_overviews(backend, tmp_path):
    grid = Grid(600, 600, (0.0, 10.0, 0.0, 6000.0, 0.0, -10.0), _wkt(UTM33))
    spec = RasterSpec(grid=grid, count=1, dtype="float32", nodata=-1.0)
    values = np.linspace(0, 1, 600 * 600, dtype=np.float32).reshape(1, 600, 600)
    sink = backend.create(str(tmp_path / "p_tmp.tif"), spec)
    sink.write(values, Window(0, 0, 600, 600))
    sink.close()
    backend.to_cog(str(tmp_path / "p_tmp.tif"), str(tmp_path / "p.tif"), spec)
    ds = gdal.Open(str(tmp_path / "p.tif"))
    np.testing.assert_array_equal(ds.ReadAsArray(), values[0])
    overview = ds.GetRasterBand(1).GetOverview(0).ReadAsArray()
    ds = None
    # AVERAGE of a 2x2 block of the ramp: the mean of its four values.
    block = values[0, :2, :2]
    assert overview[0, 0] == pytest.approx(block.mean(), rel=1e-5)


def test_write_polygons_one_feature_per_8_connected_label(backend, tmp_path):
    labels = np.zeros((20, 30), np.int32)
    labels[2:5, 3:7] = 1  # 3x4 block: 12 px
    labels[10, 10] = 2  # two pixels touching at a corner: one 8-connected region
    labels[11, 11] = 2
    labels[14:18, 20] = 3  # an L: 4 + 3 px
    labels[17, 21:24] = 3
    grid = Grid(30, 20, (500000.0, 10.0, 0.0, 5000000.0, 0.0, -10.0), _wkt(UTM33))
    labels_path = str(tmp_path / "labels.tif")
    sink = backend.create(labels_path, RasterSpec(grid, 1, "int32", 0))  # nodata 0: background
    sink.write(labels, Window(0, 0, 30, 20))
    sink.close()
    layer = PolygonLayer(
        labels_path=labels_path,
        grid=grid,
        attributes={
            "area_m2": np.array([0.0, 1200.0, 200.0, np.nan]),
            "class_name": np.array(["", "a", "b", "c"], dtype=object),
            "pixels": np.array([0, 12, 2, 7], dtype=np.int64),
        },
        field_types={"area_m2": "float", "class_name": "str", "pixels": "int"},
        layer_name="change_polygons",
    )
    path = str(tmp_path / "polygons.gpkg")
    backend.write_polygons(path, layer)
    ds = ogr.Open(path)
    lyr = ds.GetLayer(0)
    assert lyr.GetName() == "change_polygons"
    assert lyr.GetSpatialRef().GetAuthorityCode(None) == str(UTM33)
    definition = lyr.GetLayerDefn()
    names = [definition.GetFieldDefn(i).GetName() for i in range(definition.GetFieldCount())]
    assert names == ["area_m2", "class_name", "pixels"]
    rows = {}
    for feature in lyr:
        rows[feature.GetField("class_name")] = (
            feature.GetGeometryRef().GetArea(),
            None if not feature.IsFieldSetAndNotNull("area_m2") else feature.GetField("area_m2"),
            feature.GetField("pixels"),
        )
    ds = None
    assert rows == {"a": (1200.0, 1200.0, 12), "b": (200.0, 200.0, 2), "c": (700.0, None, 7)}
    # the scratch polygon layer is gone
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.tif", "polygons.gpkg"]


# -- errors -----------------------------------------------------------------------------------
@pytest.fixture(params=[False, True], ids=["gdal-exceptions-off", "gdal-exceptions-on"])
def gdal_exceptions(request):
    """Run a test with osgeo.gdal exceptions off (QGIS's default) and on (some user scripts)."""
    before = gdal.GetUseExceptions()
    if request.param:
        gdal.UseExceptions()
    else:
        gdal.DontUseExceptions()
    yield request.param
    if before:
        gdal.UseExceptions()
    else:
        gdal.DontUseExceptions()


def test_missing_and_non_raster_files_name_the_file(backend, tmp_path, gdal_exceptions):
    missing = str(tmp_path / "nope.tif")
    with pytest.raises(InputError, match="nope.tif: file not found"):
        backend.open(missing)
    with pytest.raises(InputError, match="is a folder, not a raster file"):
        backend.open(str(tmp_path))
    text = tmp_path / "notes.tif"
    text.write_text("not a raster\n")
    with pytest.raises(InputError, match=r"notes\.tif: not a raster GDAL can read"):
        backend.open(str(text))


@pytest.mark.parametrize("layout", ["GTiff", "COG"])
def test_truncated_file_is_an_input_error_naming_it(
    backend, tmp_path, s2_pair, gdal_exceptions, layout
):
    """A plain GeoTIFF written by GDAL keeps its directory at the end, so truncation shows at
    open; a COG keeps it first, so truncation shows when the lost tiles are read."""
    truncated = tmp_path / "truncated.tif"
    gdal.Translate(str(truncated), s2_pair[0], format=layout, creationOptions=["COMPRESS=DEFLATE"])
    with open(truncated, "r+b") as f:
        f.truncate(os.path.getsize(truncated) // 3)
    with pytest.raises(InputError, match=r"truncated\.tif: (not a raster|cannot read pixels)"):
        source = backend.open(str(truncated))
        try:
            grid = source.grid
            source.read(Window(0, 0, grid.width, grid.height), list(range(1, 14)))
        finally:
            source.close()


def test_output_in_missing_folder_is_an_output_error(backend, tmp_path):
    grid = Grid(10, 10, (0.0, 1.0, 0.0, 10.0, 0.0, -1.0), _wkt(UTM33))
    with pytest.raises(OutputError, match="no_such_dir"):
        backend.create(str(tmp_path / "no_such_dir" / "x.tif"), RasterSpec(grid, 1, "uint8", 255))
