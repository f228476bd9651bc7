"""Strip-by-strip region labelling against scipy's whole-array labelling, on real GeoTIFFs."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import rasterio
from hypothesis import given, settings
from hypothesis import strategies as st
from rasterio.crs import CRS
from scipy import ndimage

from swimdiff_geo.inference.io import CrsInfo, Grid, RasterSpec
from swimdiff_geo.inference.io_rasterio import RasterioBackend
from swimdiff_geo.inference.regions import label_scene_regions

UTM33 = CRS.from_epsg(32633).to_wkt()
PIXEL_AREA_M2 = 100.0  # 10 m pixels


def label_on_disk(keys, values, strip_rows, min_area_m2, folder: Path):
    """Run label_scene_regions over ``keys`` with rasterio sinks; return regions and labels."""
    rows, cols = keys.shape
    grid = Grid(cols, rows, (500000.0, 10.0, 0.0, 5000000.0, 0.0, -10.0), UTM33)
    backend = RasterioBackend()
    spec = RasterSpec(grid, 1, "int32", 0)
    provisional = backend.create(str(folder / "provisional.tif"), spec)
    final = backend.create(str(folder / "labels.tif"), spec)

    def window_of(array):
        return lambda w: array[w.row_off : w.row_off + w.height, w.col_off : w.col_off + w.width]

    regions = label_scene_regions(
        window_of(keys), grid, CrsInfo(is_geographic=False), min_area_m2, provisional, final,
        values_of=window_of(values), strip_rows=strip_rows,
    )  # fmt: skip
    provisional.close()
    final.close()
    with rasterio.open(folder / "labels.tif") as labels:
        return regions, labels.read(1).astype(np.int64)


def whole_array_regions(keys):
    """Reference: scipy's 8-connected labelling of the whole array, one key at a time."""
    reference = np.zeros(keys.shape, np.int64)
    n = 0
    for key in np.unique(keys[keys > 0]):
        labels, m = ndimage.label(keys == key, structure=np.ones((3, 3), bool))
        reference[labels > 0] = labels[labels > 0] + n
        n += m
    return reference, n


@settings(max_examples=40, deadline=None)
@given(
    rows=st.integers(1, 50), cols=st.integers(1, 50), density=st.floats(0.05, 0.95),
    n_keys=st.integers(1, 3), strip=st.integers(1, 17), min_pixels=st.integers(0, 4),
    seed=st.integers(0, 2**31),
)  # fmt: skip
def test_strips_find_the_regions_of_the_whole_array(
    rows, cols, density, n_keys, strip, min_pixels, seed
):
    rng = np.random.default_rng(seed)
    keys = np.where(
        rng.random((rows, cols)) < density, rng.integers(1, n_keys + 1, (rows, cols)), 0
    )
    values = rng.random((rows, cols))
    reference, n_reference = whole_array_regions(keys)
    sizes = np.bincount(reference.ravel(), minlength=n_reference + 1)
    kept_reference = np.isin(reference, np.flatnonzero(sizes >= max(min_pixels, 1))) & (
        reference > 0
    )

    with tempfile.TemporaryDirectory() as folder:
        regions, labels = label_on_disk(
            keys, values, strip, min_pixels * PIXEL_AREA_M2, Path(folder)
        )

    # the same regions: labelled exactly where the kept reference regions are, one to one
    assert ((labels > 0) == kept_reference).all()
    pairs = np.unique(np.stack([labels[kept_reference], reference[kept_reference]]), axis=1)
    assert pairs.shape[1] == regions.count
    assert len(np.unique(pairs[0])) == regions.count == len(np.unique(pairs[1]))
    assert set(np.unique(labels[labels > 0])) == set(range(1, regions.count + 1))
    # per-region values match the pixels carrying each label
    found = labels.ravel()
    np.testing.assert_array_equal(regions.pixels[1:], np.bincount(found)[1:])
    np.testing.assert_allclose(regions.area_m2, regions.pixels * PIXEL_AREA_M2)
    np.testing.assert_allclose(regions.value_sum[1:], np.bincount(found, values.ravel())[1:])
    for region in range(1, regions.count + 1):
        assert (keys[labels == region] == regions.key[region]).all()


def test_regions_crossing_strip_edges_at_corners_join_and_keys_never_merge(tmp_path):
    # A diagonal line crosses every edge of 3-row strips only corner to corner (the 8-connected
    # case); a two-pixel-wide column of another key touches its end and must stay apart.
    keys = np.zeros((40, 42), np.int64)
    keys[np.arange(40), np.arange(40)] = 1
    keys[:, 40:] = 2
    values = np.where(keys == 1, 0.25, 0.75)
    regions, labels = label_on_disk(keys, values, 3, 0.0, tmp_path)
    assert regions.count == 2
    assert regions.key.tolist() == [0, 1, 2]  # numbered by first pixel: the line starts at (0, 0)
    assert regions.pixels.tolist() == [0, 40, 80]
    np.testing.assert_allclose(regions.value_sum[1:], [40 * 0.25, 80 * 0.75])
    np.testing.assert_array_equal(labels, keys)
