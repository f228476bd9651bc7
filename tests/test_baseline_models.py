"""The bundled baseline models (swimdiff_geo/default_models) on the real sample rasters."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio

from swimdiff_geo.inference import load_model

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "swimdiff_geo" / "default_models"
SAMPLES = ROOT / "sample_data"


def _read(path: Path) -> np.ndarray:
    with rasterio.open(path) as ds:
        return ds.read().astype(np.float32)


def test_cva_model_follows_contract_and_ranks_by_spectral_change():
    model = load_model(MODELS / "s2_change_cva.onnx", expected_type="change_detection")
    contract = model.contract
    with rasterio.open(SAMPLES / "s2_pair" / "s2_date_a.tif") as ds:
        assert list(ds.descriptions) == contract.bands  # sample order == model order
    a = _read(SAMPLES / "s2_pair" / "s2_date_a.tif")
    b = _read(SAMPLES / "s2_pair" / "s2_date_b.tif")
    x = contract.scale(np.concatenate([a, b])[None].copy())
    prob = model.run(x)[0, 0]
    assert prob.shape == a.shape[1:]
    assert np.all((prob >= 0) & (prob <= 1))
    magnitude = np.sqrt((((b - a) * contract.input_scale) ** 2).sum(axis=0))
    most = magnitude >= np.percentile(magnitude, 95)
    least = magnitude <= np.percentile(magnitude, 50)
    # the 5% most-changed pixels score higher than the quieter half, and both classes occur
    assert prob[most].mean() > prob[least].mean() + 0.3
    assert (prob > contract.threshold).any() and (prob <= contract.threshold).any()
    # the same image twice: no change anywhere
    same = contract.scale(np.concatenate([a, a])[None].copy())
    assert model.run(same).max() < contract.threshold


def test_landcover_rules_put_water_where_ndwi_is_high():
    model = load_model(MODELS / "landsat_landcover_rules.onnx", expected_type="segmentation")
    contract = model.contract
    raw = _read(SAMPLES / "landsat_pucallpa" / "landsat_2020.tif")
    probs = model.run(contract.scale(raw[None].copy()))[0]
    assert probs.shape == (contract.num_classes,) + raw.shape[1:]
    np.testing.assert_allclose(probs.sum(axis=0), 1.0, atol=1e-5)
    swir1, nir, red, green = raw
    valid = raw.min(axis=0) > 0
    ndwi = (green - nir) / (green + nir + 1e-6)
    ndvi = (nir - red) / (nir + red + 1e-6)
    names = {v: int(k) for k, v in contract.class_names.items()}
    label = probs.argmax(axis=0)
    wet = valid & (ndwi >= np.percentile(ndwi[valid], 99))
    green_veg = valid & (ndvi >= np.percentile(ndvi[valid], 50))
    assert (label[wet] == names["water"]).mean() > 0.5
    assert (label[green_veg] == names["vegetation"]).mean() > 0.9
