"""Model metadata validation: a model that breaks the contract is named with the bad key."""

from __future__ import annotations

import pytest

from swimdiff_geo.inference.contract import ModelContract
from swimdiff_geo.inference.errors import ModelError
from tests.model_builders import change_contract


def _meta(**changes):
    meta = change_contract(["B02", "B03", "B04"]).to_metadata()
    for key, value in changes.items():
        if value is None:
            meta.pop(key)
        else:
            meta[key] = value
    return meta


def test_round_trip():
    contract = change_contract(["B02", "B03", "B04"], standardization_mean=[0.1, 0.2, 0.3],
                               standardization_std=[1.0, 2.0, 3.0],
                               input_band_means=[0.1, 0.2, 0.3])  # fmt: skip
    again = ModelContract.from_metadata(contract.to_metadata())
    assert again == contract


@pytest.mark.parametrize(
    ("changes", "key"),
    [
        ({"model_type": None}, "model_type"),
        ({"model_type": '"superresolution"'}, "model_type"),
        ({"num_dates": "1"}, "num_dates"),
        ({"bands": "[]"}, "bands"),
        ({"tile_size": "4"}, "tile_size"),
        ({"tiles_overlap": "100"}, "tiles_overlap"),
        ({"format_version": "99"}, "format_version"),
        ({"standardization_mean": "[0.1]", "standardization_std": "[1.0]"}, "standardization_mean"),
        ({"standardization_mean": "[0.1, 0.2, 0.3]"}, "standardization_std"),
        ({"input_band_means": "[0.1, 0.2]"}, "input_band_means"),
        ({"threshold": "1.5"}, "threshold"),
        ({"nodata_policy": '"guess"'}, "nodata_policy"),
    ],
)
def test_bad_metadata_names_the_key(changes, key):
    with pytest.raises(ModelError) as err:
        ModelContract.from_metadata(_meta(**changes), source="m.onnx")
    assert key in str(err.value) and "m.onnx" in str(err.value)


def test_scale_applies_input_scale_then_per_band_standardisation():
    import numpy as np

    c = change_contract(["A", "B"], input_scale=0.5, standardization_mean=[1.0, 2.0],
                        standardization_std=[2.0, 4.0])  # fmt: skip
    x = np.full((4, 1, 1), 10.0, np.float32)  # two dates x two bands
    np.testing.assert_allclose(c.scale(x).ravel(), [2.0, 0.75, 2.0, 0.75])
