"""Regenerate sample_data/ from the real imagery in a shared data folder.

    python tools/make_sample_data.py /path/to/shared/data

Writes small, redistributable crops (see sample_data/README.md for sources and licences):
- s2_pair/: a 13-band Sentinel-2 L1C pair from Las Vegas (an OSCD test city: its labels exist
  nowhere, so the crop carries none), every band resampled (bilinear) onto the 10 m B02 grid;
- landsat_pucallpa/: two Landsat composites (1990, 2020), public domain;
- naip_nd/: two NAIP crops (2015, 2020) that keep their own, ~1 px different, grids;
- s2_water_rio/: a 48 px Sentinel-2 L1C pair from Rio de Janeiro (an OSCD test city) with
  water on both dates, water on one date only and land, for the change model's water mask;
- s2_cirrus_saclay/: a 48 px Sentinel-2 L1C pair from Saclay (OSCD's unlabelled saclay_w) whose
  second date lies under thin cirrus, for the engine's cirrus warning;
- s2_slovenia/: eo-learn's 13-band Sentinel-2 L1C scene 3 (a date the bundled land-cover model
  was not trained on) as uint16 DN, with its land-use label raster (MIT / Copernicus / RABA).
"""

from __future__ import annotations

import argparse
import glob
from pathlib import Path

import numpy as np
import rasterio
from rasterio.warp import Resampling, reproject
from rasterio.windows import Window, from_bounds

from swimdiff_geo.bands import SENTINEL2_L1C

OUT = Path(__file__).resolve().parent.parent / "sample_data"
OSCD_IMAGES = "oscd/Onera Satellite Change Detection dataset - Images"
S2_CITY = "lasvegas"
S2_SIZE = 200
PROFILE = {"driver": "GTiff", "compress": "deflate", "predictor": 2, "tiled": False}


def oscd_stack(city_dir: Path, date: int, window: Window) -> tuple[np.ndarray, dict]:
    """13 bands of one OSCD date resampled onto ``window`` of the B02 (10 m) grid, uint16."""
    pattern = str(city_dir / f"imgs_{date}" / "*.tif")
    files = {Path(f).stem.rsplit("_", 1)[1]: f for f in glob.glob(pattern)}
    with rasterio.open(files["B02"]) as ref:
        transform = ref.window_transform(window)
        crs = ref.crs
    out = np.zeros((13, window.height, window.width), np.float32)
    for i, band in enumerate(SENTINEL2_L1C.bands):
        with rasterio.open(files[band]) as src:
            reproject(rasterio.band(src, 1), out[i], dst_transform=transform, dst_crs=crs,
                      resampling=Resampling.bilinear)  # fmt: skip
    profile = PROFILE | {"width": window.width, "height": window.height, "count": 13,
                         "dtype": "uint16", "crs": crs, "transform": transform}  # fmt: skip
    return np.round(out).astype(np.uint16), profile


def busiest_window(city_dir: Path, size: int) -> Window:
    """The ``size`` px square with the most strong spectral change (CVA magnitude, top 5%)."""
    from scipy.ndimage import uniform_filter

    with rasterio.open(glob.glob(str(city_dir / "imgs_1" / "*_B02.tif"))[0]) as a, rasterio.open(
        glob.glob(str(city_dir / "imgs_2" / "*_B02.tif"))[0]
    ) as b:  # fmt: skip
        h, w = min(a.height, b.height), min(a.width, b.width)
    full = Window(0, 0, w, h)
    a, _ = oscd_stack(city_dir, 1, full)
    b, _ = oscd_stack(city_dir, 2, full)
    magnitude = np.sqrt(((b.astype(np.float32) - a) ** 2).sum(axis=0))
    strong = (magnitude > np.percentile(magnitude, 95)).astype(np.float32)
    density = uniform_filter(strong, size)
    half = size // 2
    inner = density[half : h - half, half : w - half]
    row, col = np.unravel_index(np.argmax(inner), inner.shape)
    return Window(int(col), int(row), size, size)


def write(path: Path, data: np.ndarray, profile: dict, names: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
        for i, name in enumerate(names, start=1):
            dst.set_band_description(i, name)
    print(f"{path.relative_to(OUT.parent)}: {data.shape}, {path.stat().st_size / 1e3:.0f} kB")


def make_s2(shared: Path) -> None:
    city_dir = shared / OSCD_IMAGES / S2_CITY
    window = busiest_window(city_dir, S2_SIZE)
    print(f"{S2_CITY}: window col {window.col_off}, row {window.row_off}")
    for date, name in ((1, "s2_date_a.tif"), (2, "s2_date_b.tif")):
        data, profile = oscd_stack(city_dir, date, window)
        write(OUT / "s2_pair" / name, data, profile, list(SENTINEL2_L1C.bands))


# Guanabara Bay's shore: water on both dates, water on one date only, land (a search of the
# unlabelled OSCD cities for the 48 px window with the most of the smallest of the three).
WATER_CITY, WATER_WINDOW = "rio", Window(240, 232, 48, 48)


def make_s2_crop(shared: Path, city: str, window: Window, folder: str, stem: str) -> None:
    """Both dates of an OSCD city's ``window`` as ``folder/<stem>_a.tif`` and ``_b.tif``."""
    for date, suffix in ((1, "a"), (2, "b")):
        data, profile = oscd_stack(shared / OSCD_IMAGES / city, date, window)
        write(OUT / folder / f"{stem}_{suffix}.tif", data, profile, list(SENTINEL2_L1C.bands))


# Thin cirrus over Paris on 2017-08-29 (the second date of OSCD's saclay_w, saclay_e and bercy):
# B10 about 30 DN above the first date everywhere in the scene, for the engine's cirrus warning.
CIRRUS_CITY, CIRRUS_WINDOW = "saclay_w", Window(96, 96, 48, 48)


def crop(src_path: Path, dst_path: Path, bounds: tuple[float, float, float, float] | None,
         names: list[str]) -> None:  # fmt: skip
    with rasterio.open(src_path) as src:
        window = (from_bounds(*bounds, transform=src.transform).round_offsets().round_lengths()
                  if bounds else Window(0, 0, src.width, src.height))  # fmt: skip
        data = src.read(window=window)
        profile = PROFILE | {"width": window.width, "height": window.height, "count": src.count,
                             "dtype": src.dtypes[0], "crs": src.crs, "nodata": src.nodata,
                             "transform": src.window_transform(window)}  # fmt: skip
    write(dst_path, data, profile, names)


def make_landsat(shared: Path) -> None:
    folder = shared / "landsat_timeseries_pucallpa"
    for year in (1990, 2020):
        crop(folder / f"{year}.tif", OUT / "landsat_pucallpa" / f"landsat_{year}.tif", None,
             ["SWIR1", "NIR", "RED", "GREEN"])  # fmt: skip


def make_naip(shared: Path) -> None:
    folder = shared / "naip_timeseries_nd"
    first = folder / "m_4709963_se_14_1_20150926.tif"
    with rasterio.open(first) as src:
        left, top = src.bounds.left + 200 * 5.0, src.bounds.top - 150 * 5.0
    bounds = (left, top - 400 * 5.0, left + 400 * 5.0, top)  # 400 x 400 px at 5 m
    for date, year in (("20150926", 2015), ("20200831", 2020)):
        crop(folder / f"m_4709963_se_14_1_{date}.tif", OUT / "naip_nd" / f"naip_{year}.tif",
             bounds, ["RED", "GREEN", "BLUE", "NIR"])  # fmt: skip


def make_slovenia(shared: Path) -> None:
    folder = shared / "eolearn_slovenia_s2_lulc"
    with rasterio.open(folder / "derived_reference_scene_3_s2l1c_13band.tif") as src:
        reflectance, names = src.read(), list(src.descriptions)
        profile = PROFILE | {"width": src.width, "height": src.height, "count": src.count,
                             "dtype": "uint16", "crs": src.crs, "transform": src.transform,
                             "nodata": None}  # fmt: skip
    # Top-of-atmosphere reflectance -> L1C digital numbers (x 10000), the bundled models' input.
    dn = np.clip(np.round(reflectance * 10000.0), 0, 65535).astype(np.uint16)
    write(OUT / "s2_slovenia" / "s2_slovenia_scene3.tif", dn, profile, names)
    crop(folder / "derived_LULC.tif", OUT / "s2_slovenia" / "lulc.tif", None, ["LULC"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("shared_data", type=Path, help="the folder holding oscd/, naip_.../ ...")
    args = parser.parse_args()
    make_s2(args.shared_data)
    make_s2_crop(args.shared_data, WATER_CITY, WATER_WINDOW, "s2_water_rio", "s2_water")
    make_s2_crop(args.shared_data, CIRRUS_CITY, CIRRUS_WINDOW, "s2_cirrus_saclay", "s2_cirrus")
    make_landsat(args.shared_data)
    make_naip(args.shared_data)
    make_slovenia(args.shared_data)


if __name__ == "__main__":
    main()
