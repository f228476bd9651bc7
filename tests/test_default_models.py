"""The bundled trained models (swimdiff_geo/default_models) on the real sample rasters."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner
from swimdiff_geo.cli.main import cli

from swimdiff_geo.inference import load_model
from swimdiff_geo.inference.defaults import (
    DEFAULT_MODELS_DIR,
    bundled_models,
    default_model_path,
    resolve_model_path,
)
from tests.conftest import S2_BANDS, water_on_each_date


def test_every_bundled_model_is_at_most_25_mb_and_self_describing():
    names = bundled_models()
    assert {"s2_change_swimdiff", "s2_landcover_swimdiff"} <= set(names)
    for name in names:
        path = DEFAULT_MODELS_DIR / f"{name}.onnx"
        assert path.stat().st_size <= 25_000_000, name
        contract = load_model(path).contract
        assert contract.bands and contract.tile_size >= 64, name


def test_default_change_model_is_the_trained_sentinel2_model():
    path = Path(default_model_path("change_detection"))
    assert path.name == "s2_change_swimdiff.onnx"
    contract = load_model(path, expected_type="change_detection").contract
    assert contract.bands == S2_BANDS and contract.num_dates == 2
    assert contract.input_scale == pytest.approx(1e-4)  # digital numbers in
    assert contract.threshold == 0.5
    assert "int8" in contract.extra["quantization"]


def _detect(s2_a: Path, s2_b: Path, out: Path) -> tuple[dict, np.ndarray]:
    result = CliRunner().invoke(
        cli, ["detect-change", str(s2_a), str(s2_b), "-o", str(out), "-q", "--no-polygons"]
    )
    assert result.exit_code == 0, result.output
    with rasterio.open(out / "change_probability.tif") as src:
        return json.loads((out / "summary.json").read_text()), src.read(1)


def test_default_change_model_on_the_sample_pair(s2_pair, tmp_path):
    """No --model: the bundled model finds some change in Las Vegas 2015 -> 2018, is symmetric in
    the dates (absolute feature differences), and finds less change between an image and itself."""
    a, b = s2_pair
    summary, prob = _detect(a, b, tmp_path / "ab")
    assert summary["model"]["path"].endswith("s2_change_swimdiff.onnx")
    assert 0 < summary["pixels"]["changed"] < 0.5 * summary["pixels"]["valid"]
    assert prob.min() >= 0 and prob.max() <= 1
    _, swapped = _detect(b, a, tmp_path / "ba")
    np.testing.assert_allclose(swapped, prob, atol=1e-5)
    same, _ = _detect(a, a, tmp_path / "aa")
    assert same["pixels"]["changed"] < 0.1 * summary["pixels"]["changed"]


def test_default_change_model_calls_no_change_on_water(s2_water_pair, tmp_path):
    """The bundled change model carries the water mask (docs/export.md): on Rio's shore its
    probability is 0 where both dates are water and the network's own (never exactly 0)
    elsewhere, water on one date only included."""
    mask = load_model(default_model_path("change_detection")).contract.extra["water_mask"]
    assert "B11" in mask["water"]
    _, prob = _detect(*s2_water_pair, tmp_path / "ab")
    water, tie = water_on_each_date(s2_water_pair)
    both, one = water.all(axis=0) & ~tie, water.any(axis=0) & ~water.all(axis=0) & ~tie
    assert both.sum() > 500 and one.sum() > 500
    assert np.all(prob[both] == 0) and np.all(prob[one] > 0)


def test_bundled_model_by_name_maps_slovenian_land_cover(tmp_path):
    """The land-cover model on a date it was not trained on (sample_data/s2_slovenia, scene 3),
    by name, against the scene's land-use labels: forest and grassland, as the labels say."""
    folder = Path(__file__).resolve().parents[1] / "sample_data" / "s2_slovenia"
    out = tmp_path / "lc"
    result = CliRunner().invoke(
        cli, ["map-landcover", str(folder / "s2_slovenia_scene3.tif"), "-o", str(out), "-q",
              "--model", "s2_landcover_swimdiff"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    contract = load_model(DEFAULT_MODELS_DIR / "s2_landcover_swimdiff.onnx").contract
    ids = {name: int(k) for k, name in contract.class_names.items()}
    with rasterio.open(out / "landcover.tif") as src:
        pred = src.read(1)
    with rasterio.open(folder / "lulc.tif") as src:
        labels = src.read(1)  # RABA codes: 2 forest, 3 grassland
    forest, grass = labels == 2, labels == 3
    assert (pred[forest] == ids["forest"]).mean() > 0.8
    assert (pred[grass] == ids["grassland"]).mean() > 0.5
    assert (pred[forest] == ids["grassland"]).mean() < 0.1


def test_model_names_resolve_to_bundled_files_and_paths_stay_paths(tmp_path):
    assert resolve_model_path("s2_landcover_swimdiff") == str(
        DEFAULT_MODELS_DIR / "s2_landcover_swimdiff.onnx"
    )
    assert resolve_model_path("s2_change_cva.onnx").endswith("default_models/s2_change_cva.onnx")
    assert resolve_model_path("no_such_model") == "no_such_model"
    local = tmp_path / "mine.onnx"
    assert resolve_model_path(str(local)) == str(local)
