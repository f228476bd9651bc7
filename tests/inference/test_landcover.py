"""map-landcover on real rasters: class map, areas, polygons, patch classifiers, bad inputs."""

from __future__ import annotations

import csv
import re
from xml.etree import ElementTree

import fiona
import numpy as np
import pytest
import rasterio
import rasterio.windows
from click.testing import CliRunner
from swimdiff_geo.cli.main import cli

from swimdiff_geo.inference.contract import read_contract
from swimdiff_geo.inference.errors import InputError
from swimdiff_geo.inference.landcover import LandcoverOptions, LandcoverOutputs, map_landcover
from tests.conftest import LANDCOVER_CLASSES, LANDCOVER_WEIGHTS, LANDSAT_BANDS, SAMPLE_DATA
from tests.model_builders import (
    classification_contract,
    mean_pool_classifier_model,
    pointwise_segmentation_model,
    pointwise_segmentation_numpy,
    segmentation_contract,
)


def test_class_map_areas_and_polygons(landsat_pair, landsat_segmentation_model, tmp_path):
    image = landsat_pair[1]
    outputs = LandcoverOutputs.in_dir(str(tmp_path / "lc"), polygons=True, probabilities=True)
    summary = map_landcover(str(image), outputs,
                            LandcoverOptions(model=str(landsat_segmentation_model)))  # fmt: skip
    with rasterio.open(image) as src, rasterio.open(outputs.landcover) as lc:
        assert lc.crs == src.crs and lc.transform.almost_equals(src.transform)
        assert lc.dtypes[0] == "uint8" and lc.nodata == 255
        assert lc.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        classes = lc.read(1)
        colors = lc.colormap(1)
        x = src.read().astype(np.float64) / 255.0
        nodata = np.all(src.read() == src.nodata, axis=0) if src.nodata is not None else None
    # category names and colours come from the model metadata
    aux = (tmp_path / "lc" / "landcover.tif.aux.xml").read_text()
    assert all(f"<Category>{name}</Category>" in aux for name in LANDCOVER_CLASSES)
    for class_id, hex_color in read_contract(landsat_segmentation_model).class_colors.items():
        rgb = tuple(int(hex_color[i : i + 2], 16) for i in (1, 3, 5))
        assert colors[int(class_id)][:3] == rgb
    expected = np.argmax(pointwise_segmentation_numpy(x, np.array(LANDCOVER_WEIGHTS)), axis=0)
    valid = classes != 255
    assert (expected[valid] == classes[valid]).mean() > 0.999
    if nodata is not None:
        assert (classes[nodata] == 255).all()
    # QGIS default style next to the class map: a paletted renderer with the model's classes
    style = ElementTree.parse(tmp_path / "lc" / "landcover.qml").getroot()
    entries = style.findall(".//paletteEntry")
    assert [e.get("label") for e in entries] == LANDCOVER_CLASSES
    with open(outputs.areas_csv, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["class_name"] for r in rows] == LANDCOVER_CLASSES
    assert sum(int(r["pixels"]) for r in rows) == valid.sum() == summary["pixels"]["valid"]
    assert sum(float(r["area_m2"]) for r in rows) == pytest.approx(summary["valid_area_m2"])
    assert sum(float(r["percent_of_valid_area"]) for r in rows) == pytest.approx(100.0)
    for r in rows:
        assert float(r["area_ha"]) == pytest.approx(float(r["area_m2"]) / 1e4)
    # with its .csvt the table opens typed (numbers sort as numbers in QGIS)
    with fiona.open(outputs.areas_csv) as table:
        assert dict(table.schema["properties"]) == {
            "class_id": "int32", "class_name": "str", "pixels": "int32",
            "area_m2": "float", "area_ha": "float", "percent_of_valid_area": "float",
        }  # fmt: skip
    with fiona.open(outputs.polygons) as layer:
        features = list(layer)
    per_class = {}
    for f in features:
        per_class.setdefault(f["properties"]["class_id"], 0)
        per_class[f["properties"]["class_id"]] += f["properties"]["pixels"]
        assert f["properties"]["class_name"] == LANDCOVER_CLASSES[f["properties"]["class_id"]]
    for r in rows:  # with min_area 0, polygons of a class cover exactly its pixels
        assert per_class.get(int(r["class_id"]), 0) == int(r["pixels"])
    with rasterio.open(outputs.probabilities) as p:
        assert p.count == 3 and p.descriptions[0] == "p(water)"
    # the same folder again, overwritten without polygons and probabilities: those go too
    lean = LandcoverOutputs.in_dir(str(tmp_path / "lc"))
    map_landcover(str(image), lean, LandcoverOptions(model=str(landsat_segmentation_model),
                                                     overwrite=True))  # fmt: skip
    assert sorted(p.name for p in (tmp_path / "lc").iterdir()) == [
        "class_areas.csv", "class_areas.csvt", "landcover.qml", "landcover.tif",
        "landcover.tif.aux.xml", "summary.json",
    ]  # fmt: skip


def test_min_area_is_a_minimum_mapping_unit(landsat_pair, landsat_segmentation_model, tmp_path):
    image, model = str(landsat_pair[1]), str(landsat_segmentation_model)
    plain = LandcoverOutputs.in_dir(str(tmp_path / "plain"), polygons=True)
    map_landcover(image, plain, LandcoverOptions(model=model))
    with fiona.open(plain.polygons) as layer:
        area_of = {f["properties"]["region_id"]: f["properties"]["area_m2"] for f in layer}
    plain_areas = np.array([0.0] + [area_of[i] for i in range(1, len(area_of) + 1)])[1:]
    min_area = float(np.quantile(plain_areas, 0.9))  # most regions are under it
    sieved = LandcoverOutputs.in_dir(str(tmp_path / "sieved"), polygons=True)
    summary = map_landcover(image, sieved, LandcoverOptions(model=model, min_area=min_area))
    raster_only = LandcoverOutputs.in_dir(str(tmp_path / "raster_only"))
    map_landcover(image, raster_only, LandcoverOptions(model=model, min_area=min_area))

    with rasterio.open(plain.landcover) as a, rasterio.open(sieved.landcover) as b:
        before, after, transform = a.read(1), b.read(1), b.transform
    with rasterio.open(raster_only.landcover) as c:
        np.testing.assert_array_equal(c.read(1), after)  # the same map without polygons
    assert summary["min_area_m2"] == min_area
    # nodata stays nodata; pixels change class only inside regions under the minimum
    np.testing.assert_array_equal(after == 255, before == 255)
    plain_ids = rasterize_polygons(plain.polygons, before.shape, transform)
    small = plain_areas < min_area
    changed = after != before
    assert changed.any() and (plain_ids[changed] > 0).all()
    assert small[plain_ids[changed] - 1].all()
    # the class areas count the sieved map
    with open(sieved.areas_csv, newline="") as fh:
        rows = {int(r["class_id"]): int(r["pixels"]) for r in csv.DictReader(fh)}
    counts = np.bincount(after[after != 255].ravel(), minlength=len(LANDCOVER_CLASSES))
    assert rows == dict(enumerate(counts.tolist()))
    # the polygons cover the sieved map exactly (no holes where specks were), one per region,
    # and a polygon under the minimum touches no other (an island in nodata)
    with fiona.open(sieved.polygons) as layer:
        props = [f["properties"] for f in layer]
    ids = rasterize_polygons(sieved.polygons, after.shape, transform)
    np.testing.assert_array_equal(ids == 0, after == 255)
    class_of = np.full(len(props) + 1, -1)
    for p in props:
        class_of[p["region_id"]] = p["class_id"]
    np.testing.assert_array_equal(class_of[ids][after != 255], after[after != 255])
    assert len(props) < len(plain_areas)
    small_ids = {p["region_id"] for p in props if p["area_m2"] < min_area}
    padded = np.pad(ids, 1)
    for dy, dx in ((0, 1), (1, -1), (1, 0), (1, 1)):
        other = padded[1 + dy : 1 + dy + ids.shape[0], 1 + dx : 1 + dx + ids.shape[1]]
        touching = (ids != other) & (ids > 0) & (other > 0)
        assert not small_ids & set(ids[touching]) and not small_ids & set(other[touching])


def rasterize_polygons(path, shape, transform) -> np.ndarray:
    """The polygons' region_id burnt at pixel centres (0 outside every polygon)."""
    from rasterio.features import rasterize

    with fiona.open(path) as layer:
        shapes = [(f["geometry"], f["properties"]["region_id"]) for f in layer]
    return rasterize(shapes, out_shape=shape, transform=transform, fill=0, dtype="int32")


def test_patch_classifier_maps_on_a_strided_grid(landsat_pair, models_dir, tmp_path):
    weights = np.array(LANDCOVER_WEIGHTS)
    model = mean_pool_classifier_model(
        str(models_dir / "classifier.onnx"),
        classification_contract(LANDSAT_BANDS, LANDCOVER_CLASSES, input_scale=1 / 255),
        weights,
    )
    image = landsat_pair[1]
    stride, tile = 16, 32
    outputs = LandcoverOutputs.in_dir(str(tmp_path / "lc"))
    map_landcover(str(image), outputs, LandcoverOptions(model=model, stride=stride,
                                                        tile_size=tile))  # fmt: skip
    with rasterio.open(image) as src, rasterio.open(outputs.landcover) as lc:
        assert lc.res == pytest.approx((src.res[0] * stride, src.res[1] * stride))
        assert (lc.width, lc.height) == (-(-src.width // stride), -(-src.height // stride))
        assert lc.bounds.left == pytest.approx(src.bounds.left)
        assert lc.bounds.top == pytest.approx(src.bounds.top)
        classes = lc.read(1)
        x = src.read().astype(np.float64) / 255.0
        h, w = src.height, src.width
    # a cell is the class of the tile-sized window centred on it (shifted inside the raster)
    for r, c in [(0, 0), (5, 7), (classes.shape[0] - 1, classes.shape[1] - 1), (10, 30)]:
        cy = min(max(r * stride + stride // 2 - tile // 2, 0), h - tile)
        cx = min(max(c * stride + stride // 2 - tile // 2, 0), w - tile)
        window = x[:, cy : cy + tile, cx : cx + tile]
        if classes[r, c] == 255:
            continue
        assert classes[r, c] == np.argmax(weights @ window.mean(axis=(1, 2)))


def test_map_landcover_bad_inputs(landsat_pair, s2_pair, naip_pair, landsat_change_model,
                                  landsat_segmentation_model, tmp_path):  # fmt: skip
    cases = [
        ([s2_pair[0], "--model", landsat_segmentation_model], ["13 bands"], s2_pair[0]),
        # as many bands as the default Landsat model (SWIR1 NIR RED GREEN), but described as
        # RED GREEN BLUE NIR: taken in order, RED would go in as SWIR1
        ([naip_pair[0]], ["lacks band SWIR1", "RED, GREEN, BLUE, NIR", "--bands"], naip_pair[0]),
        ([landsat_pair[0], "--model", landsat_change_model], ["change_detection model"],
         landsat_change_model),
        ([tmp_path / "missing.tif"], ["file not found"], tmp_path / "missing.tif"),
    ]  # fmt: skip
    for i, (args, words, named) in enumerate(cases):
        out = tmp_path / f"out{i}"
        result = CliRunner().invoke(cli, ["map-landcover", *map(str, args), "-o", str(out), "-q"])
        assert result.exit_code == 1, result.output
        assert str(named) in result.output and all(w in result.output for w in words)
        assert not out.exists()
    # where the descriptions are wrong, --bands still maps the bands by hand
    out = tmp_path / "naip_mapped"
    result = CliRunner().invoke(
        cli, ["map-landcover", str(naip_pair[0]), "--bands", "4,4,1,2", "-o", str(out), "-q"]
    )
    assert result.exit_code == 0, result.output
    assert (out / "landcover.tif").exists()


def test_stride_given_to_a_segmentation_model_warns(landsat_pair, landsat_segmentation_model,
                                                    tmp_path):  # fmt: skip
    """--stride spaces a patch classifier's cells; a segmentation model ignores it, and says so
    rather than silently (the summary's stride_px stays 1)."""
    outputs = LandcoverOutputs.in_dir(str(tmp_path / "lc"))
    options = LandcoverOptions(model=str(landsat_segmentation_model), stride=4)
    summary = map_landcover(str(landsat_pair[1]), outputs, options)
    (warning,) = summary["warnings"]
    assert warning.startswith("warning: --stride 4 ignored") and "segmentation model" in warning


def test_inputs_on_another_scale_than_the_training_data_warn(landsat_pair, tmp_path):
    """A model standardised on the 1990 composite (8-bit) maps 2020 without a word, and warns,
    naming the file, when 2020 comes as 16-bit values 100x larger."""
    old, new = landsat_pair
    with rasterio.open(old) as src:
        pixels = src.read().reshape(src.count, -1).astype(np.float64) / 255.0
        pixels = pixels[:, np.all(pixels > 0, axis=0)]
    contract = segmentation_contract(
        LANDSAT_BANDS, LANDCOVER_CLASSES, input_scale=1 / 255,
        standardization_mean=pixels.mean(axis=1).tolist(),
        standardization_std=pixels.std(axis=1).tolist(),
    )  # fmt: skip
    model = pointwise_segmentation_model(
        str(tmp_path / "standardised.onnx"), contract, np.array(LANDCOVER_WEIGHTS)
    )
    with rasterio.open(new) as src:
        profile = src.profile | {"dtype": "uint16"}
        sixteen_bit = src.read().astype(np.uint16) * 100
    wide = tmp_path / "landsat_2020_16bit.tif"
    with rasterio.open(wide, "w", **profile) as dst:
        dst.write(sixteen_bit)

    def scale_warnings(image, out):
        outputs = LandcoverOutputs.in_dir(str(out), polygons=False)
        summary = map_landcover(str(image), outputs, LandcoverOptions(model=model))
        return [w for w in summary["warnings"] if "pixel values look" in w]

    assert scale_warnings(new, tmp_path / "8bit") == []
    (warning,) = scale_warnings(wide, tmp_path / "16bit")
    assert warning.startswith(f"warning: {wide}: pixel values look ")
    factor = float(re.search(r"look ([\d,]+)x larger", warning)[1].replace(",", ""))
    assert 30 < factor < 300


def test_extent_of_a_segmentation_model_that_sees_context_gives_the_whole_runs_pixels(
    s2_pair, tmp_path
):
    """The bundled Sentinel-2 segmentation model (a ResNet-18 UNet: context matters) maps an
    extent as the same pixels of the whole-image run, probabilities included (64 px windows, so
    that the 198 px sample holds several)."""
    image = str(s2_pair[0])
    col, row, width, height = 90, 30, 70, 40
    with rasterio.open(image) as ds:
        t = ds.transform
    left, top = t * (col + 0.25, row + 0.25)
    right, bottom = t * (col + width - 0.25, row + height - 0.25)
    runs = {}
    for name, extent in (("full", None), ("part", (left, bottom, right, top))):
        runs[name] = LandcoverOutputs.in_dir(str(tmp_path / name), probabilities=True)
        options = LandcoverOptions(model="s2_landcover_swimdiff", tile_size=64, extent=extent)
        map_landcover(image, runs[name], options)
    window = rasterio.windows.Window(col, row, width, height)
    with rasterio.open(runs["full"].probabilities) as f:
        with rasterio.open(runs["part"].probabilities) as p:
            np.testing.assert_allclose(p.read(), f.read(window=window), rtol=0, atol=1e-6)


def test_metres_given_as_degrees_hold_no_pixel(tmp_path):
    """A UTM extent read as longitude/latitude (the default --extent-crs) maps nowhere: the run
    says the image holds no pixel of it, as for any extent outside, instead of crashing."""
    image = SAMPLE_DATA / "s2_slovenia" / "s2_slovenia_scene3.tif"
    options = LandcoverOptions(model="s2_landcover_swimdiff",
                               extent=(465400, 5079500, 465900, 5080000))  # fmt: skip
    with pytest.raises(InputError, match=r"holds no pixel of the extent 465400, .*\(EPSG:4326\)"):
        map_landcover(str(image), LandcoverOutputs.in_dir(str(tmp_path / "lc")), options)
    assert not (tmp_path / "lc").exists()


def test_extent_maps_the_window_holding_it(landsat_pair, landsat_segmentation_model, models_dir,
                                           tmp_path):  # fmt: skip
    """Segmentation: the window of the whole-image class map (pointwise model). Patch
    classifier: its strided grid starts at the extent's first pixel."""
    image = str(landsat_pair[1])
    with rasterio.open(image) as ds:
        t = ds.transform
    col, row, width, height = 200, 100, 120, 64
    left, top = t * (col + 0.25, row + 0.25)
    right, bottom = t * (col + width - 0.25, row + height - 0.25)
    extent = (left, bottom, right, top)
    full = LandcoverOutputs.in_dir(str(tmp_path / "full"))
    map_landcover(image, full, LandcoverOptions(model=str(landsat_segmentation_model)))
    part = LandcoverOutputs.in_dir(str(tmp_path / "part"))
    summary = map_landcover(image, part, LandcoverOptions(model=str(landsat_segmentation_model),
                                                           extent=extent))  # fmt: skip
    window = rasterio.windows.Window(col, row, width, height)
    with rasterio.open(full.landcover) as f, rasterio.open(part.landcover) as p:
        assert p.transform.almost_equals(f.window_transform(window))
        np.testing.assert_array_equal(p.read(1), f.read(1, window=window))
    assert summary["extent"]["bounds"] == list(extent)

    model = mean_pool_classifier_model(
        str(models_dir / "classifier_extent.onnx"),
        classification_contract(LANDSAT_BANDS, LANDCOVER_CLASSES, input_scale=1 / 255),
        np.array(LANDCOVER_WEIGHTS),
    )
    cells = LandcoverOutputs.in_dir(str(tmp_path / "cells"))
    map_landcover(image, cells, LandcoverOptions(model=model, stride=16, tile_size=32,
                                                 extent=extent))  # fmt: skip
    with rasterio.open(cells.landcover) as lc:
        assert (lc.width, lc.height) == (-(-width // 16), -(-height // 16))
        assert (lc.bounds.left, lc.bounds.top) == pytest.approx(t * (col, row))
