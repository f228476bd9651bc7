"""map-landcover on real rasters: class map, areas, polygons, patch classifiers, bad inputs."""

from __future__ import annotations

import csv
import re
from xml.etree import ElementTree

import fiona
import numpy as np
import pytest
import rasterio
from click.testing import CliRunner
from swimdiff_geo.cli.main import cli

from swimdiff_geo.inference.contract import read_contract
from swimdiff_geo.inference.landcover import LandcoverOptions, LandcoverOutputs, map_landcover
from tests.conftest import LANDCOVER_CLASSES, LANDCOVER_WEIGHTS, LANDSAT_BANDS
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


def test_map_landcover_bad_inputs(landsat_pair, s2_pair, landsat_change_model,
                                  landsat_segmentation_model, tmp_path):  # fmt: skip
    cases = [
        ([s2_pair[0], "--model", landsat_segmentation_model], ["13 bands"], s2_pair[0]),
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
