"""Land-cover data: polygons/points rasterised to sparse labels, spatial blocks, patch folders."""

from __future__ import annotations

import json
from pathlib import Path

import fiona
import numpy as np
import pytest
import rasterio
from fiona.transform import transform_geom
from scipy import ndimage

from swimdiff_geo.data.change import IGNORE_INDEX, BandScaling
from swimdiff_geo.data.landcover import (
    LandcoverDataError,
    PatchDataset,
    TiledLabelledWindows,
    list_patch_folder,
    read_training_labels,
    spatial_block_split,
    stratified_split,
)

LANDCOVER_MINI = Path(__file__).resolve().parents[1] / "data" / "landcover_mini"
RASTER = LANDCOVER_MINI / "slovenia_s2_l1c_scene3.tif"
POLYGONS = LANDCOVER_MINI / "lulc_polygons.geojson"
CLASSES = ["artificial surface", "forest", "grassland", "schrubland"]


def write_vector(features: list[dict], path: Path, crs: str, driver: str = "GPKG") -> Path:
    """Write GeoJSON-like features (all of one geometry type) with fiona."""
    geom_type = features[0]["geometry"]["type"]
    props = {
        k: ("int" if isinstance(v, int) else "str") for k, v in features[0]["properties"].items()
    }
    schema = {"geometry": geom_type, "properties": props}
    with fiona.open(path, "w", driver=driver, crs=crs, schema=schema) as dst:
        for f in features:
            dst.write({"geometry": f["geometry"], "properties": f["properties"]})
    return path


def polygon_features() -> list[dict]:
    return json.loads(POLYGONS.read_text())["features"]


def test_polygons_rasterise_to_sparse_class_ids() -> None:
    raster = read_training_labels(POLYGONS, RASTER, "LULC_NAME")
    assert raster.class_values == CLASSES
    assert raster.image.shape == (13, 101, 100)
    assert raster.band_names[8] == "B8A"
    counts = np.bincount(raster.labels[raster.labels != IGNORE_INDEX], minlength=4)
    assert (counts > 0).all()
    assert (raster.labels == IGNORE_INDEX).any()  # sparse: not every pixel is labelled
    # Forest dominates this valley; water-free, so NDWI-like checks are meaningless, but forest
    # is darker in red than grassland in real Sentinel-2 data.
    red = raster.image[3]
    assert red[raster.labels == 1].mean() < red[raster.labels == 2].mean()


def test_geopackage_in_another_crs_gives_the_same_labels(tmp_path: Path) -> None:
    features = polygon_features()
    wgs84 = [
        f | {"geometry": transform_geom("EPSG:32633", "EPSG:4326", f["geometry"])} for f in features
    ]
    gpkg = write_vector(wgs84, tmp_path / "lulc_wgs84.gpkg", "EPSG:4326")
    direct = read_training_labels(POLYGONS, RASTER, "LULC_NAME").labels
    warped = read_training_labels(gpkg, RASTER, "LULC_NAME").labels
    # Reprojection moves polygon edges by far less than a pixel: only boundary pixels may flip.
    assert (direct == warped).mean() > 0.99


def test_numeric_class_field_and_explicit_class_list() -> None:
    raster = read_training_labels(POLYGONS, RASTER, "LULC_ID")
    assert raster.class_values == ["2", "3", "4", "8"]  # numeric sort, not "2" < "8" by text
    subset = read_training_labels(
        POLYGONS, RASTER, "LULC_NAME", class_values=["forest", "grassland"]
    )
    assert set(np.unique(subset.labels)) == {0, 1, IGNORE_INDEX}


def test_points_label_the_pixel_that_contains_them(tmp_path: Path) -> None:
    with rasterio.open(RASTER) as src:
        transform = src.transform
    pixels = [(10, 12, "forest"), (50, 60, "grassland"), (80, 33, "forest")]
    features = []
    for row, col, name in pixels:
        x, y = rasterio.transform.xy(transform, row, col)  # the pixel centre
        features.append(
            {"geometry": {"type": "Point", "coordinates": (x, y)}, "properties": {"cls": name}}
        )
    shp = write_vector(features, tmp_path / "points.shp", "EPSG:32633", driver="ESRI Shapefile")
    labels = read_training_labels(shp, RASTER, "cls").labels
    assert int((labels != IGNORE_INDEX).sum()) == 3
    assert [labels[r, c] for r, c, _ in pixels] == [0, 1, 0]


def test_conflicting_overlaps_are_ignored(tmp_path: Path) -> None:
    features = polygon_features()
    forest = next(f for f in features if f["properties"]["LULC_NAME"] == "forest")
    clash = forest | {"properties": forest["properties"] | {"LULC_NAME": "grassland"}}
    other = next(f for f in features if f["properties"]["LULC_NAME"] == "schrubland")
    gpkg = write_vector([forest, clash, other], tmp_path / "clash.gpkg", "EPSG:32633")
    labels = read_training_labels(gpkg, RASTER, "LULC_NAME").labels
    alone = write_vector([forest, other], tmp_path / "alone.gpkg", "EPSG:32633")
    forest_pixels = read_training_labels(alone, RASTER, "LULC_NAME").labels == 0
    assert forest_pixels.any()
    assert (labels[forest_pixels] == IGNORE_INDEX).all()  # forest and grassland on one pixel
    assert (labels != IGNORE_INDEX).any()  # the uncontested schrubland polygon stays


def test_bad_vector_inputs_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(LandcoverDataError, match=r"no attribute 'klass'.*LULC_NAME"):
        read_training_labels(POLYGONS, RASTER, "klass")
    far = [
        {"geometry": {"type": "Point", "coordinates": (float(x), 0.0)}, "properties": {"c": c}}
        for x, c in ((0, "a"), (1, "b"))
    ]
    gpkg = write_vector(far, tmp_path / "far.gpkg", "EPSG:32633")
    with pytest.raises(LandcoverDataError, match="no training feature falls on the raster"):
        read_training_labels(gpkg, RASTER, "c")


@pytest.mark.parametrize("buffer", [0, 3])
def test_spatial_blocks_are_disjoint_whole_blocks_with_buffer(buffer: int) -> None:
    labels = read_training_labels(POLYGONS, RASTER, "LULC_NAME").labels
    train, val = spatial_block_split(
        labels, block_size=25, val_fraction=0.25, seed=1, buffer=buffer
    )
    is_train, is_val = train != IGNORE_INDEX, val != IGNORE_INDEX
    assert not (is_train & is_val).any()
    assert is_val.sum() >= 0.25 * (labels != IGNORE_INDEX).sum()
    np.testing.assert_array_equal(val[is_val], labels[is_val])
    # Validation pixels are whole blocks: every labelled pixel of a touched block is in val.
    block = (np.arange(101)[:, None] // 25) * 4 + np.arange(100)[None, :] // 25
    for b in np.unique(block[is_val]):
        in_block = (block == b) & (labels != IGNORE_INDEX)
        assert is_val[in_block].all()
    # No training pixel closer than `buffer` pixels to a validation block.
    val_blocks = np.isin(block, np.unique(block[is_val]))
    if buffer:
        near = ndimage.binary_dilation(val_blocks, iterations=buffer)
        assert not (is_train & near).any()
    assert is_train.any()


def test_tiled_validation_counts_each_labelled_pixel_once() -> None:
    raster = read_training_labels(POLYGONS, RASTER, "LULC_NAME")
    _, val = spatial_block_split(raster.labels, 25, 0.3, 0)
    ds = TiledLabelledWindows(raster.image, val, BandScaling(1.0), 40)
    total = sum(int((ds[i][1] != IGNORE_INDEX).sum()) for i in range(len(ds)))
    assert total == int((val != IGNORE_INDEX).sum())


def make_patch_folder(root: Path, size: int = 16, stride: int = 8) -> dict[str, int]:
    """EuroSAT-style folders of real patches cut from the mini scene: a patch goes to the class
    covering at least 80 % of it (GeoTIFF); a few grassland patches are PNG (8-bit RGB)."""
    raster = read_training_labels(POLYGONS, RASTER, "LULC_NAME")
    with rasterio.open(RASTER) as src:
        profile = src.profile
    counts: dict[str, int] = {}
    for r in range(0, 101 - size + 1, stride):
        for c in range(0, 100 - size + 1, stride):
            window = raster.labels[r : r + size, c : c + size]
            values, n = np.unique(window[window != IGNORE_INDEX], return_counts=True)
            if not len(n) or n.max() < 0.8 * size * size:
                continue
            name = raster.class_values[int(values[n.argmax()])].replace(" ", "_")
            folder = root / name
            folder.mkdir(parents=True, exist_ok=True)
            patch = raster.image[:, r : r + size, c : c + size]
            out = folder / f"{name}_{r}_{c}.tif"
            window_transform = rasterio.windows.transform(
                rasterio.windows.Window(c, r, size, size), profile["transform"]
            )
            prof = profile | {"width": size, "height": size, "transform": window_transform}
            with rasterio.open(out, "w", **prof) as dst:
                dst.write(patch)
            counts[name] = counts.get(name, 0) + 1
    return counts


def test_patch_folder_listing_and_stratified_split(tmp_path: Path) -> None:
    counts = make_patch_folder(tmp_path / "patches")
    folder = list_patch_folder(tmp_path / "patches")
    assert folder.class_values == sorted(counts)
    assert len(folder.files) == sum(counts.values())
    train, val = stratified_split(folder.labels, 0.25, seed=0)
    assert not set(train) & set(val) and len(train) + len(val) == len(folder.files)
    for k in range(len(folder.class_values)):
        assert any(folder.labels[i] == k for i in train)
    ds = PatchDataset([folder.files[i] for i in val], [folder.labels[i] for i in val],
                      BandScaling(1.0), size=24)  # fmt: skip
    x, y = ds[0]
    assert x.shape == (13, 24, 24) and int(y) == folder.labels[val[0]]


def test_patch_folder_errors(tmp_path: Path) -> None:
    (tmp_path / "only").mkdir()
    with pytest.raises(LandcoverDataError, match="at least 2 class folders"):
        list_patch_folder(tmp_path)
    with pytest.raises(LandcoverDataError, match="not found"):
        list_patch_folder(tmp_path / "nope")
