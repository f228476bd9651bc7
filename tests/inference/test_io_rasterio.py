"""The rasterio backend's polygon writing: band by band, the same polygons as in one piece."""

from __future__ import annotations

import tempfile
from pathlib import Path

import fiona
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from rasterio.crs import CRS
from scipy import ndimage

from swimdiff_geo.inference.io import Grid, PolygonLayer, RasterSpec, Window
from swimdiff_geo.inference.io_rasterio import RasterioBackend

UTM33 = CRS.from_epsg(32633).to_wkt()
PIXEL_AREA_M2 = 100.0  # 10 m pixels
WHOLE_RASTER = 10**6  # band_rows larger than any test raster: one band, as rasterio does it


def write_labels(labels: np.ndarray, folder: Path) -> tuple[str, Grid]:
    rows, cols = labels.shape
    grid = Grid(cols, rows, (500000.0, 10.0, 0.0, 5000000.0, 0.0, -10.0), UTM33)
    path = str(folder / "labels.tif")
    sink = RasterioBackend().create(path, RasterSpec(grid, 1, "int32", 0))
    sink.write(labels.astype(np.int32)[None], Window(0, 0, cols, rows))
    sink.close()
    return path, grid


def polygons_by_label(labels: np.ndarray, folder: Path, band_rows: int) -> dict[int, list]:
    """Write the polygons of ``labels`` with ``band_rows``; return {label: [geometry, ...]}."""
    labels_path, grid = write_labels(labels, folder)
    n = int(labels.max())
    layer = PolygonLayer(
        labels_path=labels_path,
        grid=grid,
        attributes={"region": np.arange(n + 1, dtype=np.int64)},
        field_types={"region": "int"},
        layer_name="regions",
    )
    out = folder / f"polygons_{band_rows}.gpkg"
    RasterioBackend().write_polygons(str(out), layer, band_rows=band_rows)
    found: dict[int, list] = {}
    with fiona.open(out) as src:
        for feature in src:
            geometry = feature.geometry
            found.setdefault(feature.properties["region"], []).append(
                {"type": geometry.type, "coordinates": geometry.coordinates}
            )
    return found


def ring_area(ring) -> float:
    x, y = np.asarray(ring).T
    return 0.5 * abs(float(np.dot(x[:-1], y[1:]) - np.dot(x[1:], y[:-1])))


def polygon_area(geometry) -> float:
    exterior, *holes = geometry["coordinates"]
    return ring_area(exterior) - sum(ring_area(hole) for hole in holes)


def regions_of(mask: np.ndarray) -> np.ndarray:
    return ndimage.label(mask, structure=np.ones((3, 3), bool))[0]


def test_regions_across_band_edges_stay_one_polygon(tmp_path):
    labels = np.zeros((40, 30), np.int32)
    rows = np.arange(40)
    labels[rows, rows // 2] = 1  # a staircase (8-connected) through every band edge
    labels[0:40, 25] = 2  # a column from top to bottom
    labels[3:6, 10:13] = 3  # a block inside the first band
    labels[8:12, 14:17] = 4  # a block across the edge at row 9 / 10
    labels[18:31, 17:24] = 5  # a block with a hole, across two edges
    labels[24:26, 19:21] = 0
    found = polygons_by_label(labels, tmp_path, band_rows=10)
    assert sorted(found) == [1, 2, 3, 4, 5]
    for label, geometries in found.items():
        assert len(geometries) == 1, label
        assert polygon_area(geometries[0]) == (labels == label).sum() * PIXEL_AREA_M2
    assert len(found[5][0]["coordinates"]) == 2  # the hole survives
    # the scratch mask of the crossing regions is gone
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.tif", "polygons_10.gpkg"]


@settings(max_examples=25, deadline=None)
@given(
    rows=st.integers(1, 40), cols=st.integers(1, 40), density=st.floats(0.05, 0.9),
    band_rows=st.integers(1, 9), seed=st.integers(0, 2**31),
)  # fmt: skip
def test_banded_polygons_equal_the_whole_raster_polygons(rows, cols, density, band_rows, seed):
    mask = np.random.default_rng(seed).random((rows, cols)) < density
    labels = regions_of(mask)
    with tempfile.TemporaryDirectory() as folder:
        banded = polygons_by_label(labels, Path(folder), band_rows)
        whole = polygons_by_label(labels, Path(folder), WHOLE_RASTER)
    assert banded == whole
    assert sorted(banded) == list(range(1, labels.max() + 1))
    assert all(len(geometries) == 1 for geometries in banded.values())


def test_no_regions_give_an_empty_layer(tmp_path):
    found = polygons_by_label(np.zeros((12, 9), np.int32), tmp_path, band_rows=4)
    assert found == {}
    with fiona.open(tmp_path / "polygons_4.gpkg") as src:
        assert src.schema["properties"] == {"region": "int"}
