"""Sliding-window output equals the whole-array computation for pointwise models.

The raster crops are real (the Landsat sample pair); sizes, tiles, overlaps and batch sizes are
drawn by hypothesis, covering rasters smaller and larger than a tile.
"""

from __future__ import annotations

import numpy as np
import rasterio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rasterio.windows import Window

from swimdiff_geo.inference.change import ChangeOptions, ChangeOutputs, detect_change
from swimdiff_geo.inference.landcover import LandcoverOptions, LandcoverOutputs, map_landcover
from tests.conftest import CHANGE_BIAS, CHANGE_GAIN, LANDCOVER_WEIGHTS
from tests.model_builders import pointwise_change_numpy, pointwise_segmentation_numpy


def _crop(src_path, dst_path, row, col, height, width):
    """Copy a window of a real raster (clamped inside it) to a plain GeoTIFF; returns its DNs."""
    with rasterio.open(src_path) as src:
        height, width = min(height, src.height), min(width, src.width)
        row, col = min(row, src.height - height), min(col, src.width - width)
        window = Window(col, row, width, height)
        profile = src.profile | {
            "width": width, "height": height, "transform": src.window_transform(window),
            "tiled": False, "nodata": None,
        }  # fmt: skip
        profile.pop("blockxsize", None)
        profile.pop("blockysize", None)
        data = src.read(window=window)
    with rasterio.open(dst_path, "w", **profile) as dst:
        dst.write(data)
    return data.astype(np.float32)


crops = st.tuples(
    st.integers(0, 200), st.integers(0, 400), st.integers(3, 150), st.integers(3, 150)
)
tiling = st.integers(8, 64).flatmap(
    lambda tile: st.tuples(st.just(tile), st.integers(0, tile - 1), st.integers(1, 5))
)


@settings(max_examples=20, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])  # fmt: skip
@given(crop=crops, tiles=tiling)
def test_change_sliding_window_equals_whole_array(
    crop, tiles, landsat_pair, landsat_change_model, tmp_path_factory
):
    tmp = tmp_path_factory.mktemp("exact")
    row, col, h, w = crop
    tile, overlap_px, batch = tiles
    a = _crop(landsat_pair[0], tmp / "a.tif", row, col, h, w) / 255.0
    b = _crop(landsat_pair[1], tmp / "b.tif", row, col, h, w) / 255.0
    outputs = ChangeOutputs(str(tmp / "p.tif"), str(tmp / "m.tif"))
    options = ChangeOptions(
        model=str(landsat_change_model), tile_size=tile, overlap=100.0 * overlap_px / tile,
        batch_size=batch, device="cpu",
    )  # fmt: skip
    detect_change(str(tmp / "a.tif"), str(tmp / "b.tif"), outputs, options)
    with rasterio.open(outputs.probability) as ds:
        got = ds.read(1)
    expected = pointwise_change_numpy(a, b, CHANGE_GAIN, CHANGE_BIAS)
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
    with rasterio.open(outputs.mask) as ds:
        np.testing.assert_array_equal(ds.read(1), (got >= 0.5).astype(np.uint8))


@settings(max_examples=10, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])  # fmt: skip
@given(crop=crops, tiles=tiling)
def test_segmentation_sliding_window_equals_whole_array(
    crop, tiles, landsat_pair, landsat_segmentation_model, tmp_path_factory
):
    tmp = tmp_path_factory.mktemp("exact_lc")
    row, col, h, w = crop
    tile, overlap_px, batch = tiles
    x = _crop(landsat_pair[1], tmp / "x.tif", row, col, h, w) / 255.0
    outputs = LandcoverOutputs(str(tmp / "lc.tif"), probabilities=str(tmp / "p.tif"))
    options = LandcoverOptions(
        model=str(landsat_segmentation_model), tile_size=tile,
        overlap=100.0 * overlap_px / tile, batch_size=batch, device="cpu",
    )  # fmt: skip
    map_landcover(str(tmp / "x.tif"), outputs, options)
    expected = pointwise_segmentation_numpy(x, np.array(LANDCOVER_WEIGHTS))
    with rasterio.open(outputs.probabilities) as ds:
        np.testing.assert_allclose(ds.read(), expected, atol=1e-5, rtol=0)
    with rasterio.open(outputs.landcover) as ds:
        classes = ds.read(1)
    # Where two classes tie within float error the argmax may differ; elsewhere it must agree.
    top2 = np.sort(expected, axis=0)[-2:]
    clear = (top2[1] - top2[0]) > 1e-4
    np.testing.assert_array_equal(classes[clear], np.argmax(expected, axis=0)[clear])
