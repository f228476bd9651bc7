"""OSCD reader on tests/data/oscd_mini: real crops in the real layout, labels of our own."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.enums import Resampling
from rasterio.warp import reproject
from rasterio.windows import Window

from swimdiff_geo.data.oscd import (
    IMAGES_DIRNAME,
    LABELS_DIRNAME,
    OSCDCity,
    OSCDError,
    find_oscd_root,
    list_oscd_cities,
)

OSCD_MINI = Path(__file__).resolve().parents[1] / "data" / "oscd_mini"
OWN_LABELS = OSCD_MINI / "own_labels"
MINI_CITIES = ("beihai", "saclay_e")


def read_own_labels(city: str) -> np.ndarray:
    """Our own 0/1 change mask of a mini city (no georeferencing, like OSCD's labels)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        with rasterio.open(OWN_LABELS / f"{city}_change.tif") as src:
            return src.read(1)


def build_oscd_labelled(dst: Path) -> Path:
    """Assemble a complete OSCD folder (images + Train Labels) under ``dst``; return its root.

    The labels are our own masks (tests/data/oscd_mini/own_labels) written the way OSCD
    distributes its labels: ``<city>/cm/<city>-cm.tif``, 1 = no change, 2 = change, no
    georeferencing, on date 1's grid (padded with "no change" where date 2 is smaller).
    """
    shutil.copytree(OSCD_MINI / IMAGES_DIRNAME, dst / IMAGES_DIRNAME)
    for city in MINI_CITIES:
        own = read_own_labels(city)
        with rasterio.open(next((dst / IMAGES_DIRNAME / city / "imgs_1").glob("*_B02.tif"))) as b:
            full = np.ones((b.height, b.width), np.uint8)
        full[: own.shape[0], : own.shape[1]] = own + 1
        out = dst / LABELS_DIRNAME / city / "cm" / f"{city}-cm.tif"
        out.parent.mkdir(parents=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
            with rasterio.open(
                out,
                "w",
                driver="GTiff",
                height=full.shape[0],
                width=full.shape[1],
                count=1,
                dtype="uint8",
            ) as dst_file:
                dst_file.write(full, 1)
    return dst


@pytest.fixture
def oscd_root(tmp_path: Path) -> Path:
    return build_oscd_labelled(tmp_path / "oscd")


def test_root_accepts_dataset_folder_and_images_folder(oscd_root: Path) -> None:
    assert find_oscd_root(oscd_root) == oscd_root
    assert find_oscd_root(oscd_root / IMAGES_DIRNAME) == oscd_root
    assert list_oscd_cities(oscd_root / IMAGES_DIRNAME) == list(MINI_CITIES)
    assert list_oscd_cities(OSCD_MINI, labelled_only=True) == []
    assert list_oscd_cities(oscd_root, labelled_only=True) == list(MINI_CITIES)


def test_not_an_oscd_folder_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(OSCDError, match=str(tmp_path)):
        find_oscd_root(tmp_path)
    with pytest.raises(OSCDError, match="no such OSCD city"):
        OSCDCity(OSCD_MINI, "atlantis")


def test_dates_bands_and_grid() -> None:
    city = OSCDCity(OSCD_MINI, "beihai")
    assert city.dates == ("20161209", "20180309")
    assert city.bands[:3] == ("B01", "B02", "B03") and city.bands[8] == "B8A"
    assert city.shape == (48, 48)
    assert city.crs.to_epsg() == 4326
    with rasterio.open(next((city.city_dir / "imgs_1").glob("*_B02.tif"))) as b02:
        assert city.transform == b02.transform


def test_second_date_on_a_coarser_grid_is_registered_onto_the_first() -> None:
    # saclay_e's date 2 covers the same footprint with larger pixels (the real quirk): it is
    # resampled through the geotransforms onto date 1's B02 grid, the grid of the labels.
    city = OSCDCity(OSCD_MINI, "saclay_e")
    with rasterio.open(next((city.city_dir / "imgs_1").glob("*_B02.tif"))) as b1:
        grid1 = (b1.height, b1.width), b1.transform, b1.crs
    b2_path = next((city.city_dir / "imgs_2").glob("*_B02.tif"))
    with rasterio.open(b2_path) as b2:
        assert abs(b2.transform.a) > abs(grid1[1].a) * 1.01  # date 2's pixels are larger
        raw2, transform2 = b2.read(1).astype(np.float32), b2.transform
    assert city.shape == grid1[0] and city.transform == grid1[1]
    for date in (1, 2):
        assert city.read(date).shape == (13, *city.shape)
    # independent reference: GDAL's bilinear warp of date 2's B02 onto date 1's grid
    expected = np.zeros(city.shape, np.float32)
    reproject(raw2, expected, src_transform=transform2, src_crs=grid1[2],
              dst_transform=grid1[1], dst_crs=grid1[2], resampling=Resampling.bilinear)  # fmt: skip
    ours = city.read(2)[city.bands.index("B02")]
    inner = (slice(2, -2), slice(2, -2))  # GDAL and the reader treat the outer pixels apart
    np.testing.assert_allclose(ours[inner], expected[inner], rtol=0, atol=1.0)
    # by pixel index (the original loader's crop) date 2 would be off: a visible difference
    assert (
        np.abs(raw2[:48, :48][inner] - expected[inner]).mean()
        > 5 * np.abs(ours[inner] - expected[inner]).mean()
    )


@pytest.mark.parametrize(("name", "date"), [("beihai", 1), ("beihai", 2), ("saclay_e", 1)])
def test_10m_bands_on_the_common_grid_are_read_unchanged(name: str, date: int) -> None:
    city = OSCDCity(OSCD_MINI, name)
    data = city.read(date)
    with rasterio.open(next((city.city_dir / f"imgs_{date}").glob("*_B04.tif"))) as src:
        raw = src.read(1).astype(np.float32)
    np.testing.assert_array_equal(data[city.bands.index("B04")], raw)
    assert data.dtype == np.float32


def _bilinear_2x(coarse: np.ndarray) -> np.ndarray:
    """Independent reference: np.interp along rows then columns, 10 m centres on a 20 m grid."""
    h, w = coarse.shape
    rows = (np.arange(2 * h) + 0.5) / 2 - 0.5
    cols = (np.arange(2 * w) + 0.5) / 2 - 0.5
    by_cols = np.stack([np.interp(cols, np.arange(w), line) for line in coarse])
    return np.stack([np.interp(rows, np.arange(h), line) for line in by_cols.T]).T


def test_coarse_bands_are_resampled_bilinearly_onto_10m_grid() -> None:
    city = OSCDCity(OSCD_MINI, "beihai")
    data = city.read(1)
    for band in ("B05", "B11"):  # 20 m bands whose crop origin coincides with the 10 m one
        with rasterio.open(next((city.city_dir / "imgs_1").glob(f"*_{band}.tif"))) as src:
            coarse = src.read(1).astype(np.float64)
        expected = _bilinear_2x(coarse)[: city.shape[0], : city.shape[1]]
        np.testing.assert_allclose(data[city.bands.index(band)], expected, rtol=0, atol=0.01)
    for band in ("B01", "B09", "B10"):  # 60 m: smooth, within the source range
        values = data[city.bands.index(band)]
        with rasterio.open(next((city.city_dir / "imgs_1").glob(f"*_{band}.tif"))) as src:
            coarse = src.read(1)
        assert coarse.min() <= values.min() and values.max() <= coarse.max()
        assert values.std() > 0


@pytest.mark.parametrize("date", (1, 2))
def test_windowed_read_equals_slice_of_full_read(date: int) -> None:
    city = OSCDCity(OSCD_MINI, "saclay_e")
    full = city.read(date)
    part = city.read(date, window=(7, 11, 20, 17))
    np.testing.assert_allclose(part, full[:, 7:27, 11:28], atol=1e-3)
    part_rio = city.read(date, window=Window(11, 7, 17, 20))
    np.testing.assert_array_equal(part, part_rio)


def test_window_outside_grid_is_refused() -> None:
    city = OSCDCity(OSCD_MINI, "saclay_e")
    with pytest.raises(OSCDError, match="outside"):
        city.read(1, window=(40, 0, 10, 10))
    with pytest.raises(ValueError, match="date"):
        city.read(3)


def test_labels_are_mapped_to_0_1_and_cropped(oscd_root: Path) -> None:
    for name in MINI_CITIES:
        city = OSCDCity(oscd_root, name)
        assert city.has_labels
        labels = city.read_labels()
        own = read_own_labels(name)
        assert labels.shape == city.shape
        assert labels.dtype == np.uint8
        np.testing.assert_array_equal(labels, own)
        assert 0 < labels.mean() < 1
        np.testing.assert_array_equal(city.read_labels((5, 6, 10, 12)), own[5:15, 6:18])


def test_unlabelled_city_has_clear_error() -> None:
    city = OSCDCity(OSCD_MINI, "beihai")
    assert not city.has_labels
    with pytest.raises(FileNotFoundError, match="beihai"):
        city.read_labels()


def test_missing_band_file_is_named(tmp_path: Path) -> None:
    root = build_oscd_labelled(tmp_path / "oscd")
    victim = next((root / IMAGES_DIRNAME / "beihai" / "imgs_2").glob("*_B8A.tif"))
    victim.unlink()
    with pytest.raises(OSCDError, match=r"imgs_2.*B8A"):
        OSCDCity(root, "beihai")
