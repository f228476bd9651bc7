"""End to end on tiny real data: land-cover segmentation from polygons (GeoPackage) and patch
classification (EuroSAT layout, linear probe), exported and run through the engine."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from click.testing import CliRunner
from swimdiff_geo.cli.main import cli

from swimdiff_geo.inference.contract import load_model
from swimdiff_geo.train.finetune import epoch_history, finetune_landcover, load_head_checkpoint
from tests.datasets.test_landcover_data import (
    CLASSES,
    RASTER,
    make_patch_folder,
    polygon_features,
    write_vector,
)


@pytest.fixture(scope="module")
def polygons_gpkg(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_vector(
        polygon_features(), tmp_path_factory.mktemp("vec") / "lulc.gpkg", "EPSG:32633"
    )


@pytest.fixture(scope="module")
def segmentation_run(polygons_gpkg: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("seg")
    result = CliRunner().invoke(
        cli,
        ["finetune", "landcover", "--data", str(RASTER), "--labels", str(polygons_gpkg),
         "--class-field", "LULC_NAME", "--block-size", "25", "--epochs", "1", "--batch-size", "4",
         "--crop-size", "32", "--samples-per-epoch", "4", "--val-tile", "64",
         "--class-colors", "forest=#1b7837", "--out", str(out)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return out


def test_segmentation_logs_per_class_f1_and_accuracy(segmentation_run: Path) -> None:
    rows = epoch_history(segmentation_run)
    logged = {k for r in rows for k in r}
    assert {"val_accuracy", "val_f1"} | {f"val_f1_{c}" for c in CLASSES} <= logged
    summary = json.loads((segmentation_run / "metrics.json").read_text())
    assert summary["task"] == "segmentation" and summary["classes"] == CLASSES
    assert len(summary["validation"]["f1_per_class"]) == 4
    assert summary["validation"]["overall_accuracy"] == pytest.approx(
        summary["best"]["val_accuracy"], abs=1e-6
    )
    assert summary["data"]["block_size"] == 25


def test_segmentation_export_and_engine(segmentation_run: Path, tmp_path: Path) -> None:
    from swimdiff_geo.inference.landcover import LandcoverOptions, LandcoverOutputs, map_landcover

    onnx_path = tmp_path / "landcover.onnx"
    result = CliRunner().invoke(
        cli, ["export", str(segmentation_run / "best.ckpt"), "-o", str(onnx_path),
              "--exporter", "torchscript"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    contract = load_model(onnx_path, expected_type="segmentation").contract
    assert [contract.class_names[str(i)] for i in range(4)] == CLASSES
    assert contract.class_colors["1"] == "#1b7837"  # forest, as asked
    assert len(set(contract.class_colors.values())) == 4
    assert contract.input_scale == 1.0  # float reflectance stays as it is
    assert contract.resolution == pytest.approx(999.5, abs=0.1)  # cm per pixel
    # Not standardised (--normalize scale), yet the training band means travel with the model.
    with rasterio.open(RASTER) as src:
        pixels = src.read().astype(np.float64)
        profile = src.profile
    assert contract.standardization_mean == []
    np.testing.assert_allclose(contract.input_band_means, pixels.mean(axis=(1, 2)), rtol=1e-6)

    outputs = LandcoverOutputs.in_dir(str(tmp_path / "map"), probabilities=True)
    summary = map_landcover(str(RASTER), outputs, LandcoverOptions(model=str(onnx_path)))
    assert not [w for w in summary["warnings"] if "pixel values look" in w]
    # The same scene as 16-bit digital numbers (reflectance x 10000): the units check fires.
    digital_numbers = tmp_path / "dn.tif"
    with rasterio.open(digital_numbers, "w", **(profile | {"dtype": "uint16"})) as dst:
        dst.write(np.round(pixels * 10000).astype(np.uint16))
    summary = map_landcover(
        str(digital_numbers),
        LandcoverOutputs.in_dir(str(tmp_path / "dn_map")),
        LandcoverOptions(model=str(onnx_path)),
    )
    (warning,) = [w for w in summary["warnings"] if "pixel values look" in w]
    factor = float(re.search(r"look ([\d,]+)x larger", warning)[1].replace(",", ""))
    assert 3_000 < factor < 30_000
    with rasterio.open(outputs.landcover) as src:
        classes = src.read(1)
    with rasterio.open(outputs.probabilities) as src:
        probs = src.read()
    assert classes.shape == (101, 100) and probs.shape == (4, 101, 100)
    np.testing.assert_array_equal(classes, probs.argmax(0))
    np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-4)


def test_linear_probe_on_patch_folder(tmp_path: Path) -> None:
    counts = make_patch_folder(tmp_path / "patches")
    assert len(counts) >= 2
    summary = finetune_landcover(
        tmp_path / "patches", tmp_path / "probe", linear_probe=True, epochs=1, batch_size=8,
        val_fraction=0.3, print_fn=lambda s: None,
    )  # fmt: skip
    assert summary["task"] == "classification" and summary["freeze_encoder"]
    task = load_head_checkpoint(tmp_path / "probe" / "best.ckpt")
    assert isinstance(task.model.head, torch.nn.Linear)
    assert not any(p.requires_grad for p in task.model.encoder.parameters())
    assert task.hparams.contract["tile_size"] == 16  # the patches' size
    assert task.hparams.contract["model_type"] == "classification"

    from swimdiff_geo.export import export_model

    report = export_model(
        tmp_path / "probe" / "best.ckpt", tmp_path / "probe.onnx", print_fn=lambda s: None
    )  # fmt: skip
    assert report["parity"]["max_abs_diff"] <= 1e-4
    loaded = load_model(tmp_path / "probe.onnx", expected_type="classification")
    with rasterio.open(next((tmp_path / "patches" / "forest").iterdir())) as src:
        patch = src.read()[None].astype(np.float32)
    probs = loaded.run(loaded.contract.scale(patch))
    assert probs.shape == (1, len(counts))
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)


def test_raster_without_labels_is_refused(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        cli, ["finetune", "landcover", "--data", str(RASTER), "--out", str(tmp_path / "x")]
    )
    assert result.exit_code == 1 and "--labels" in result.output
