"""Shared fixtures: real sample rasters (sample_data/) and small ONNX models built per session."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio

from swimdiff_geo.inference.inputs import open_input
from swimdiff_geo.inference.io import Window
from swimdiff_geo.inference.io_rasterio import RasterioBackend
from tests.model_builders import (
    change_contract,
    pointwise_change_model,
    pointwise_segmentation_model,
    segmentation_contract,
)
from tests.sentinel2_safe import S2_CLOUD_MASK, write_jp2_rasterio, write_safe, zip_product

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


def water_on_each_date(pair: tuple[Path, Path]) -> tuple[np.ndarray, np.ndarray]:
    """The water mask's rule (B03 > B08 and B11 < 500 DN) on each date's raw digital numbers,
    bool ``(2, H, W)``, and the pixels on its boundary on some date (B03 == B08 or B11 within
    1 DN of 500), where the model's float32 arithmetic may decide either way, bool ``(H, W)``."""
    band = {name: i + 1 for i, name in enumerate(S2_BANDS)}
    water, tie = [], []
    for path in pair:
        with rasterio.open(path) as src:
            green, nir, swir = (src.read(band[b]).astype(np.float64) for b in ("B03", "B08", "B11"))
        water.append((green > nir) & (swir < 500))
        tie.append((green == nir) | (np.abs(swir - 500) <= 1))
    return np.stack(water), np.any(tie, axis=0)


@pytest.fixture(scope="session")
def s2_water_pair() -> tuple[Path, Path]:
    """A real 48 px Sentinel-2 L1C pair (uint16 DN, Rio's shore) with water on both dates, on
    one date only, and land."""
    folder = SAMPLE_DATA / "s2_water_rio"
    return folder / "s2_water_a.tif", folder / "s2_water_b.tif"


@pytest.fixture(scope="session")
def s2_cirrus_pair() -> tuple[Path, Path]:
    """A real 48 px Sentinel-2 L1C pair (uint16 DN, Saclay) whose second date lies under thin
    cirrus (B10 median 50 DN against 19)."""
    folder = SAMPLE_DATA / "s2_cirrus_saclay"
    return folder / "s2_cirrus_a.tif", folder / "s2_cirrus_b.tif"


def read_all_bands(path: Path) -> tuple[np.ndarray, np.ndarray, object]:
    """What the engine reads from ``path`` (a raster, a product, a folder of band files): every
    one of its 13 bands, float32 ``(13, H, W)``, the valid mask and the (closed) source."""
    source = open_input(RasterioBackend(), str(path))
    try:
        grid = source.grid
        data, valid = source.read(Window(0, 0, grid.width, grid.height), range(1, 14))
        return data, valid, source
    finally:
        source.close()


def write_s2_product(folder: Path, image: Path, **kwargs) -> Path:
    """A Sentinel-2 SAFE product (tests/sentinel2_safe.py) of a 13-band 10 m GeoTIFF."""
    with rasterio.open(image) as ds:
        stack, transform, crs = ds.read(), ds.transform.to_gdal(), ds.crs.to_wkt()
    return write_safe(folder, stack, transform, crs, write_jp2_rasterio, **kwargs)


@pytest.fixture(scope="session")
def s2_products(s2_pair, tmp_path_factory) -> dict[str, Path]:
    """The sample pair as Sentinel-2 products in their download layout: ``a`` (date A, an old
    product, processing baseline 02.04), ``b_old`` and ``b_new`` (date B as an old product and
    as a new one, baseline 05.09: digital numbers + 1000, offset -1000 in the metadata), and
    ``b_zip`` (``b_new`` zipped, as Copernicus Data Space serves it). ``b_new`` carries the
    cloud mask ``S2_CLOUD_MASK``."""
    root = tmp_path_factory.mktemp("s2_products")
    out = {
        "a": write_s2_product(root / "a", s2_pair[0]),
        "b_old": write_s2_product(root / "b_old", s2_pair[1], date="20180205"),
        "b_new": write_s2_product(
            root / "b_new", s2_pair[1], date="20180205", baseline="05.09", cloud_mask=S2_CLOUD_MASK
        ),
    }
    out["b_zip"] = zip_product(out["b_new"])
    return out


@pytest.fixture(scope="session")
def s2_band_folder(s2_products, tmp_path_factory) -> Path:
    """Date A's 13 band files (JPEG 2000, 10/20/60 m) in one plain folder, as OSCD's ``imgs_1``
    holds them: no product around them."""
    folder = tmp_path_factory.mktemp("band_folder") / "imgs_1"
    folder.mkdir()
    for jp2 in s2_products["a"].rglob("IMG_DATA/*.jp2"):
        shutil.copy(jp2, folder)
    return folder


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
