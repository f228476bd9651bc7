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


def label_on_disk(keys, values, strip_rows, min_area_m2, folder: Path, small_regions="drop"):
    """Run label_scene_regions over ``keys`` with rasterio sinks; return the regions, the labels
    and the final keys (small regions dropped or merged), assembled from the strips."""
    rows, cols = keys.shape
    grid = Grid(cols, rows, (500000.0, 10.0, 0.0, 5000000.0, 0.0, -10.0), UTM33)
    backend = RasterioBackend()
    spec = RasterSpec(grid, 1, "int32", 0)
    provisional = backend.create(str(folder / "provisional.tif"), spec)
    final = backend.create(str(folder / "labels.tif"), spec)

    def window_of(array):
        return lambda w: array[w.row_off : w.row_off + w.height, w.col_off : w.col_off + w.width]

    merged = np.full(keys.shape, -1, np.int64)

    def final_keys(w, strip):
        merged[w.row_off : w.row_off + w.height, w.col_off : w.col_off + w.width] = strip

    regions = label_scene_regions(
        window_of(keys), grid, CrsInfo(is_geographic=False), min_area_m2, provisional, final,
        values_of=window_of(values), strip_rows=strip_rows, small_regions=small_regions,
        final_keys=final_keys,
    )  # fmt: skip
    provisional.close()
    final.close()
    with rasterio.open(folder / "labels.tif") as labels:
        found = labels.read(1).astype(np.int64)
    return regions, found, merged


def whole_array_regions(keys):
    """Reference: scipy's 8-connected labelling of the whole array, one key at a time."""
    reference = np.zeros(keys.shape, np.int64)
    n = 0
    for key in np.unique(keys[keys > 0]):
        labels, m = ndimage.label(keys == key, structure=np.ones((3, 3), bool))
        reference[labels > 0] = labels[labels > 0] + n
        n += m
    return reference, n


def random_scene(rows, cols, density, n_keys, seed):
    """Keys 1..n_keys on a ``density`` share of the pixels (0 elsewhere), and random values."""
    rng = np.random.default_rng(seed)
    keys = np.where(
        rng.random((rows, cols)) < density, rng.integers(1, n_keys + 1, (rows, cols)), 0
    )
    return keys, rng.random((rows, cols))


@settings(max_examples=40, deadline=None)
@given(
    rows=st.integers(1, 50), cols=st.integers(1, 50), density=st.floats(0.05, 0.95),
    n_keys=st.integers(1, 3), strip=st.integers(1, 17), min_pixels=st.integers(0, 4),
    seed=st.integers(0, 2**31),
)  # fmt: skip
def test_strips_find_the_regions_of_the_whole_array(
    rows, cols, density, n_keys, strip, min_pixels, seed
):
    keys, values = random_scene(rows, cols, density, n_keys, seed)
    reference, n_reference = whole_array_regions(keys)
    sizes = np.bincount(reference.ravel(), minlength=n_reference + 1)
    kept_reference = np.isin(reference, np.flatnonzero(sizes >= max(min_pixels, 1))) & (
        reference > 0
    )

    with tempfile.TemporaryDirectory() as folder:
        regions, labels, final_keys = label_on_disk(
            keys, values, strip, min_pixels * PIXEL_AREA_M2, Path(folder)
        )

    # the same regions: labelled exactly where the kept reference regions are, one to one
    assert ((labels > 0) == kept_reference).all()
    np.testing.assert_array_equal(final_keys, np.where(kept_reference, keys, 0))
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
    regions, labels, _ = label_on_disk(keys, values, 3, 0.0, tmp_path)
    assert regions.count == 2
    assert regions.key.tolist() == [0, 1, 2]  # numbered by first pixel: the line starts at (0, 0)
    assert regions.pixels.tolist() == [0, 40, 80]
    np.testing.assert_allclose(regions.value_sum[1:], [40 * 0.25, 80 * 0.75])
    np.testing.assert_array_equal(labels, keys)


def touching_labels(labels):
    """Pairs of different non-zero labels that are 8-neighbours, each once (whole array)."""
    padded = np.pad(labels, 1)
    centre = padded[1:-1, 1:-1]
    pairs = set()
    for dy, dx in ((0, 1), (1, -1), (1, 0), (1, 1)):
        other = padded[1 + dy : 1 + dy + labels.shape[0], 1 + dx : 1 + dx + labels.shape[1]]
        touching = (centre != other) & (centre > 0) & (other > 0)
        pairs |= {tuple(sorted(p)) for p in zip(centre[touching], other[touching], strict=True)}
    return pairs


@settings(max_examples=40, deadline=None)
@given(
    rows=st.integers(1, 40), cols=st.integers(1, 40), density=st.floats(0.3, 1.0),
    n_keys=st.integers(1, 4), strip=st.integers(1, 13), min_pixels=st.integers(1, 12),
    seed=st.integers(0, 2**31),
)  # fmt: skip
def test_merging_leaves_no_region_under_the_minimum_that_touches_another(
    rows, cols, density, n_keys, strip, min_pixels, seed
):
    keys, values = random_scene(rows, cols, density, n_keys, seed)
    original, _ = whole_array_regions(keys)
    original_sizes = np.bincount(original.ravel())
    with tempfile.TemporaryDirectory() as folder:
        regions, labels, merged = label_on_disk(
            keys, values, strip, min_pixels * PIXEL_AREA_M2, Path(folder), "merge"
        )
        # one strip gives the same keys and the same regions, numbered alike (raster order)
        again = label_on_disk(keys, values, rows, min_pixels * PIXEL_AREA_M2, Path(folder), "merge")
    np.testing.assert_array_equal(again[2], merged)
    np.testing.assert_array_equal(again[1], labels)

    # background stays background, every other pixel keeps a key and a region
    np.testing.assert_array_equal(merged == 0, keys == 0)
    np.testing.assert_array_equal(labels == 0, keys == 0)
    # only pixels of original regions under the minimum change key
    changed = merged != keys
    assert (original_sizes[original[changed]] < min_pixels).all()
    # the labels are exactly the 8-connected regions of the merged keys, one to one
    reference, n_reference = whole_array_regions(merged)
    assert regions.count == n_reference
    inside = keys > 0
    pairs = np.unique(np.stack([labels[inside], reference[inside]]), axis=1)
    assert pairs.shape[1] == len(np.unique(pairs[0])) == len(np.unique(pairs[1])) == n_reference
    # sizes and sums per region; a region under the minimum touches no other region
    found = labels.ravel()
    np.testing.assert_array_equal(regions.pixels[1:], np.bincount(found)[1:])
    np.testing.assert_allclose(regions.value_sum[1:], np.bincount(found, values.ravel())[1:])
    for region in range(1, regions.count + 1):
        assert (merged[labels == region] == regions.key[region]).all()
    small = {r for r in range(1, regions.count + 1) if regions.pixels[r] < min_pixels}
    assert not any(a in small or b in small for a, b in touching_labels(labels))


def test_a_speck_joins_the_class_it_shares_the_longest_edge_with(tmp_path):
    # Class 1 (left) and 3 (right), split by a column of class 2 only 2 pixels high...
    keys = np.ones((8, 10), np.int64)
    keys[:, 5:] = 3
    keys[3:5, 4] = 2  # a 2-pixel speck: 3 edges with class 1, 1 edge with class 3 per row
    # ...and a one-pixel-wide line of class 2 cutting class 1's top rows off: merged into 1,
    # the two parts of class 1 are one region again
    keys[1, :5] = 2
    keys[0, :5] = 1
    regions, labels, merged = label_on_disk(
        keys, np.zeros(keys.shape), 3, 6 * PIXEL_AREA_M2, tmp_path, "merge"
    )
    expected = np.ones((8, 10), np.int64)
    expected[:, 5:] = 3
    np.testing.assert_array_equal(merged, expected)
    assert regions.count == 2
    assert regions.key.tolist() == [0, 1, 3]
    assert regions.pixels.tolist() == [0, 40, 40]


def test_specks_among_themselves_take_the_largest_ones_class_and_islands_stay(tmp_path):
    keys = np.zeros((6, 12), np.int64)
    keys[1:3, 1:3] = [[1, 2], [2, 2]]  # an island of 4 pixels in background: 1 joins 2
    keys[4, 8] = 3  # a single pixel alone in background: kept, nothing to merge into
    regions, labels, merged = label_on_disk(
        keys, np.zeros(keys.shape), 2, 10 * PIXEL_AREA_M2, tmp_path, "merge"
    )
    expected = keys.copy()
    expected[1, 1] = 2
    np.testing.assert_array_equal(merged, expected)
    assert regions.key.tolist() == [0, 2, 3]
    assert regions.pixels.tolist() == [0, 4, 1]
