"""Quicklook PNGs: date A, date B and the change overlay side by side; a coloured class map.

numpy + rasterio's PNG driver only (no matplotlib / PIL). Rasters are decimated on read to at
most ``max_side`` pixels per side, so a quicklook of a huge output stays cheap.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.errors import NotGeoreferencedWarning

CHANGE_RGB = (255, 32, 32)
GAP = 4  # px between panels


def _read_small(
    path: str | Path, bands: Sequence[int], max_side: int, nearest: bool = False
) -> np.ndarray:
    with rasterio.open(path) as ds:
        scale = max(1.0, max(ds.width, ds.height) / max_side)
        shape = (len(bands), max(1, round(ds.height / scale)), max(1, round(ds.width / scale)))
        resampling = Resampling.nearest if nearest else Resampling.average
        return ds.read(list(bands), out_shape=shape, resampling=resampling)


def stretch(data: np.ndarray, low: float = 2, high: float = 98) -> np.ndarray:
    """Per-band percentile stretch of ``(C, H, W)`` to uint8 (nodata-free pixels > 0 only)."""
    out = np.zeros(data.shape, np.uint8)
    for i, band in enumerate(data.astype(np.float64)):
        valid = band[band > 0] if (band > 0).any() else band.ravel()
        lo, hi = np.percentile(valid, [low, high])
        out[i] = np.clip((band - lo) / max(hi - lo, 1e-9) * 255, 0, 255).astype(np.uint8)
    return out


def rgb_bands(descriptions: Sequence[str | None], count: int) -> list[int]:
    """1-based bands for true colour: by description (B04/B03/B02, RED/GREEN/BLUE), else 1-3."""
    names = [(d or "").upper() for d in descriptions]
    for triple in (("B04", "B03", "B02"), ("RED", "GREEN", "BLUE"), ("NIR", "RED", "GREEN")):
        if all(t in names for t in triple):
            return [names.index(t) + 1 for t in triple]
    return [1, 2, 3] if count >= 3 else [1, 1, 1]


def _side_by_side(panels: Sequence[np.ndarray]) -> np.ndarray:
    h = max(p.shape[1] for p in panels)
    gap = np.full((3, h, GAP), 255, np.uint8)
    padded = []
    for p in panels:
        canvas = np.full((3, h, p.shape[2]), 255, np.uint8)
        canvas[:, : p.shape[1]] = p
        padded += [canvas, gap]
    return np.concatenate(padded[:-1], axis=2)


def write_png(path: str | Path, rgb: np.ndarray) -> Path:
    """Write a ``(3, H, W)`` uint8 array as PNG (no georeferencing sidecar)."""
    path = Path(path)
    with rasterio.Env(GDAL_PAM_ENABLED="NO"), warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)  # a picture, not a map
        with rasterio.open(path, "w", driver="PNG", width=rgb.shape[2], height=rgb.shape[1],
                           count=3, dtype="uint8") as dst:  # fmt: skip
            dst.write(rgb)
    return path


def change_quicklook(image_a: str | Path, image_b: str | Path, change_mask: str | Path,
                     out_png: str | Path, max_side: int = 600) -> Path:  # fmt: skip
    """Date A | date B | date B with changed pixels in red, true colour, one PNG."""
    with rasterio.open(image_a) as ds:
        bands = rgb_bands(ds.descriptions, ds.count)
    a = _read_small(image_a, bands, max_side)
    b = _read_small(image_b, bands, max_side)
    mask = _read_small(change_mask, [1], max_side, nearest=True)
    a_rgb, b_rgb = stretch(a), stretch(b)
    overlay = _fit(b_rgb, mask.shape[1:]).copy()
    changed = mask[0] == 1
    for i, value in enumerate(CHANGE_RGB):
        overlay[i][changed] = (0.35 * overlay[i][changed] + 0.65 * value).astype(np.uint8)
    return write_png(out_png, _side_by_side([a_rgb, b_rgb, overlay]))


def landcover_quicklook(image: str | Path, landcover: str | Path, out_png: str | Path,
                        max_side: int = 600) -> Path:  # fmt: skip
    """True colour | class map in the model's colours, one PNG."""
    with rasterio.open(image) as ds:
        bands = rgb_bands(ds.descriptions, ds.count)
    x = _read_small(image, bands, max_side)
    classes = _read_small(landcover, [1], max_side, nearest=True)
    with rasterio.open(landcover) as ds:
        colormap = ds.colormap(1) if ds.colorinterp and ds.count == 1 else {}
    palette = np.zeros((256, 3), np.uint8)
    for value, rgba in colormap.items():
        palette[value] = rgba[:3]
    palette[255] = (255, 255, 255)
    class_rgb = np.moveaxis(palette[classes[0]], -1, 0)
    return write_png(out_png, _side_by_side([stretch(x), class_rgb]))


def _fit(rgb: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of ``(3, h, w)`` to ``shape`` (mask and image may differ by 1 px
    after decimation, or by the intersection crop)."""
    h, w = shape
    rows = np.minimum((np.arange(h) * rgb.shape[1] / h).astype(int), rgb.shape[1] - 1)
    cols = np.minimum((np.arange(w) * rgb.shape[2] / w).astype(int), rgb.shape[2] - 1)
    return rgb[:, rows][:, :, cols]


__all__ = ["change_quicklook", "landcover_quicklook", "stretch", "write_png"]
