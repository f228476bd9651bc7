"""Re-create tests/data/oscd_mini from a real OSCD download (imagery only, never the labels).

Usage: python tests/data/oscd_mini/make_oscd_mini.py /work/shared/data/oscd

Cuts the footprint of a 48 x 48 px window of date 1's 10 m B02 grid from every band file of
both dates, each band cropped to that footprint on its own 10/20/60 m grid (rounded outwards),
keeping file names, dates.txt and the OSCD folder layout. saclay_e's second date has larger
pixels over the same footprint (the real quirk: 679 x 631 px against 688 x 639), so its crop
has its own grid too. Then writes our own change labels (see own_labels/README.md): a
thresholded change-vector magnitude, not the OSCD labels.
"""

from __future__ import annotations

import math
import shutil
import sys
from pathlib import Path

import numpy as np
import rasterio
from rasterio.windows import Window

HERE = Path(__file__).resolve().parent
IMAGES = "Onera Satellite Change Detection dataset - Images"
# city -> (row_off, col_off) of the 48 x 48 crop on the B02 grid; windows with urban change.
CROPS = {"beihai": (504, 576), "saclay_e": (360, 408)}
SIZE = 48


def crop_band(
    src_path: Path, dst_path: Path, ref: rasterio.Affine, r0: int, c0: int, h: int, w: int
) -> None:
    with rasterio.open(src_path) as src:
        t = src.transform
        top = (ref.f + r0 * ref.e - t.f) / t.e
        left = (ref.c + c0 * ref.a - t.c) / t.a
        bottom = (ref.f + (r0 + h) * ref.e - t.f) / t.e
        right = (ref.c + (c0 + w) * ref.a - t.c) / t.a
        rs, cs = math.floor(top + 1e-6), math.floor(left + 1e-6)
        re_, ce = math.ceil(bottom - 1e-6), math.ceil(right - 1e-6)
        win = Window(cs, rs, ce - cs, re_ - rs)
        data = src.read(1, window=win)
        profile = src.profile
        profile.update(
            height=data.shape[0],
            width=data.shape[1],
            transform=src.window_transform(win),
            compress="deflate",
            tiled=False,
        )
        profile.pop("blockxsize", None)
        profile.pop("blockysize", None)
        with rasterio.open(dst_path, "w", **profile) as dst:
            dst.write(data, 1)


def main(oscd_root: str) -> None:
    src_images = Path(oscd_root) / IMAGES
    dst_images = HERE / IMAGES
    for city, (r0, c0) in CROPS.items():
        (dst_images / city).mkdir(parents=True, exist_ok=True)
        shutil.copy(src_images / city / "dates.txt", dst_images / city / "dates.txt")
        with rasterio.open(next((src_images / city / "imgs_1").glob("*_B02.tif"))) as b02:
            ref = b02.transform  # the footprint: a window of date 1's B02 grid, both dates
        for date in (1, 2):
            folder = src_images / city / f"imgs_{date}"
            out = dst_images / city / f"imgs_{date}"
            if out.is_dir():
                shutil.rmtree(out)
            out.mkdir()
            for path in sorted(folder.glob("*_B*.tif")):
                crop_band(path, out / path.name, ref, r0, c0, SIZE, SIZE)
    make_own_labels()


def make_own_labels() -> None:
    """Change labels of our own: change-vector magnitude of B02, B03, B04, B08, thresholded."""
    sys.path.insert(0, str(HERE.parents[2]))
    from swimdiff_geo.data.oscd import OSCDCity

    out_dir = HERE / "own_labels"
    out_dir.mkdir(exist_ok=True)
    for city in CROPS:
        c = OSCDCity(HERE, city)
        idx = [c.bands.index(b) for b in ("B02", "B03", "B04", "B08")]
        a, b = c.read(1)[idx] / 10000.0, c.read(2)[idx] / 10000.0
        # Remove the global brightness shift between dates, then threshold the magnitude.
        diff = (b - b.mean(axis=(1, 2), keepdims=True)) - (a - a.mean(axis=(1, 2), keepdims=True))
        magnitude = np.sqrt((diff**2).sum(0))
        labels = (magnitude > np.percentile(magnitude, 85)).astype(np.uint8)
        profile = dict(
            driver="GTiff",
            height=labels.shape[0],
            width=labels.shape[1],
            count=1,
            dtype="uint8",
            compress="deflate",
        )
        with rasterio.open(out_dir / f"{city}_change.tif", "w", **profile) as dst:
            dst.write(labels, 1)
        print(city, c.shape, "changed fraction", labels.mean().round(3))


if __name__ == "__main__":
    main(sys.argv[1])
