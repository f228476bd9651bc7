"""Shared fixtures: real sample rasters (sample_data/) and small ONNX models built per session."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.model_builders import (
    change_contract,
    pointwise_change_model,
    pointwise_segmentation_model,
    segmentation_contract,
)

REPO = Path(__file__).resolve().parent.parent
SAMPLE_DATA = REPO / "sample_data"
LANDSAT_BANDS = ["SWIR1", "NIR", "RED", "GREEN"]
S2_BANDS = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11",
            "B12"]  # fmt: skip
CHANGE_GAIN, CHANGE_BIAS = 40.0, -3.0


@pytest.fixture
def one_torch_thread():
    """torch on one thread for the test: the test machine has 2 cores shared with other jobs,
    and more threads only oversubscribe them. (torch is imported here, not at module level: a
    base install without the train extra still collects the engine tests.)"""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def landsat_pair() -> tuple[Path, Path]:
    """Two real Landsat composites over Pucallpa (4 bands uint8, EPSG:4326, nodata 0)."""
    folder = SAMPLE_DATA / "landsat_pucallpa"
    return folder / "landsat_1990.tif", folder / "landsat_2020.tif"


@pytest.fixture(scope="session")
def s2_pair() -> tuple[Path, Path]:
    """A real 13-band Sentinel-2 L1C pair (uint16 DN) from an unlabelled OSCD city."""
    folder = SAMPLE_DATA / "s2_pair"
    return folder / "s2_date_a.tif", folder / "s2_date_b.tif"


@pytest.fixture(scope="session")
def naip_pair() -> tuple[Path, Path]:
    """Two real NAIP crops whose grids differ by about a pixel."""
    folder = SAMPLE_DATA / "naip_nd"
    return folder / "naip_2015.tif", folder / "naip_2020.tif"


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def landsat_change_model(models_dir) -> Path:
    """Pointwise change model for the Landsat samples (tile 32, 25% overlap)."""
    path = models_dir / "landsat_change.onnx"
    contract = change_contract(LANDSAT_BANDS, input_scale=1 / 255)
    return Path(pointwise_change_model(str(path), contract, CHANGE_GAIN, CHANGE_BIAS))


@pytest.fixture(scope="session")
def s2_change_model(models_dir) -> Path:
    path = models_dir / "s2_change.onnx"
    contract = change_contract(S2_BANDS, input_scale=1e-4, tile_size=64)
    return Path(pointwise_change_model(str(path), contract, 400.0, -3.0))


LANDCOVER_WEIGHTS = [[-3.0, -5.0, 1.0, 2.0], [-1.0, 6.0, -3.0, 0.0], [3.0, -1.0, 2.0, 0.0]]
LANDCOVER_CLASSES = ["water", "vegetation", "bare"]


@pytest.fixture(scope="session")
def landsat_segmentation_model(models_dir) -> Path:
    import numpy as np

    path = models_dir / "landsat_segmentation.onnx"
    contract = segmentation_contract(LANDSAT_BANDS, LANDCOVER_CLASSES, input_scale=1 / 255)
    return Path(pointwise_segmentation_model(str(path), contract, np.array(LANDCOVER_WEIGHTS)))


@pytest.fixture
def copy_of(tmp_path):
    """Copy a file into tmp_path (to damage or edit it without touching sample_data)."""

    def _copy(path: Path, name: str | None = None) -> Path:
        target = tmp_path / (name or path.name)
        shutil.copy(path, target)
        return target

    return _copy
