"""Quicklook PNGs from the real sample rasters (numpy + rasterio only)."""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import pytest
import rasterio

from swimdiff_geo.quicklook import GAP, change_quicklook, rgb_bands, write_png

pytestmark = pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
SAMPLES = Path(__file__).resolve().parents[1] / "sample_data"


def _png_size(path: Path) -> tuple[int, int]:
    """(width, height) from the IHDR chunk, checking the signature and the chunk CRC."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    length = int.from_bytes(data[8:12], "big")
    assert data[12:16] == b"IHDR" and length == 13
    crc = int.from_bytes(data[16 + length : 20 + length], "big")
    assert zlib.crc32(data[12 : 16 + length]) == crc
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def test_rgb_bands_by_description():
    with rasterio.open(SAMPLES / "s2_pair" / "s2_date_a.tif") as ds:
        assert rgb_bands(ds.descriptions, ds.count) == [4, 3, 2]  # B04 B03 B02
    with rasterio.open(SAMPLES / "naip_nd" / "naip_2015.tif") as ds:
        assert rgb_bands(ds.descriptions, ds.count) == [1, 2, 3]


def test_change_quicklook_of_sample_pair(tmp_path):
    a = SAMPLES / "s2_pair" / "s2_date_a.tif"
    b = SAMPLES / "s2_pair" / "s2_date_b.tif"
    with rasterio.open(a) as src_a, rasterio.open(b) as src_b:
        diff = src_b.read(4).astype(int) - src_a.read(4).astype(int)
        profile = src_a.profile | {"count": 1, "dtype": "uint8", "nodata": None}
        mask = (np.abs(diff) > np.percentile(np.abs(diff), 90)).astype(np.uint8)
    mask_path = tmp_path / "mask.tif"
    with rasterio.open(mask_path, "w", **profile) as dst:
        dst.write(mask, 1)
    png = change_quicklook(a, b, mask_path, tmp_path / "ql.png")
    width, height = _png_size(png)
    assert (width, height) == (3 * mask.shape[1] + 2 * GAP, mask.shape[0])
    with rasterio.open(png) as ds:
        picture = ds.read()
    overlay = picture[:, :, 2 * (mask.shape[1] + GAP) :].astype(int)
    red_excess = overlay[0] - overlay[1:].mean(axis=0)
    assert red_excess[mask == 1].mean() > red_excess[mask == 0].mean() + 60


def test_change_quicklook_decimates_to_max_side(tmp_path):
    a = SAMPLES / "naip_nd" / "naip_2015.tif"
    with rasterio.open(a) as src:
        profile = src.profile | {"count": 1, "dtype": "uint8", "nodata": None}
        mask = (src.read(4) > 120).astype(np.uint8)
    mask_path = tmp_path / "mask.tif"
    with rasterio.open(mask_path, "w", **profile) as dst:
        dst.write(mask, 1)
    png = change_quicklook(a, a, mask_path, tmp_path / "ql.png", max_side=100)
    width, height = _png_size(png)
    assert height <= 100 and width <= 3 * 100 + 2 * GAP


def test_write_png_roundtrip(tmp_path):
    rgb = np.arange(3 * 7 * 5, dtype=np.uint8).reshape(3, 7, 5)
    path = write_png(tmp_path / "x.png", rgb)
    assert _png_size(path) == (5, 7)
    with rasterio.open(path) as ds:
        np.testing.assert_array_equal(ds.read(), rgb)
