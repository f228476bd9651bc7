"""Window grids and blend weights for sliding-window inference (numpy only).

Windows are ``tile_size`` squares; neighbours overlap by ``overlap`` pixels; the last window of a
row or column is shifted back inside the raster, so no read ever goes past an edge. A raster
smaller than a tile along an axis gets a single window of the raster's length there (the engine
pads it to the tile by reflection and crops the prediction back).

Predictions are blended with a Hann (raised-cosine) taper that down-weights window borders, where
a CNN sees the least context, except on sides that touch the raster border: there no neighbour
exists to take over, so the weight stays 1. Weights never reach zero, so every pixel covered by
a window gets a defined, convex combination of predictions.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from .io import Window


def axis_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets (pixels) of windows along one axis of ``length`` pixels.

    >>> axis_starts(10, 4, 1)
    [0, 3, 6]
    >>> axis_starts(3, 4, 1)
    [0]
    """
    if length <= 0:
        raise ValueError(f"axis length must be positive, got {length}")
    if not 0 <= overlap < tile:
        raise ValueError(f"overlap must be in [0, tile) pixels, got {overlap} for tile {tile}")
    if length <= tile:
        return [0]
    stride = tile - overlap
    starts = list(range(0, length - tile, stride))
    starts.append(length - tile)  # last window shifted inside the raster
    return starts


def window_on_tile_lattice(
    window: Window, width: int, height: int, tile: int, overlap: int
) -> tuple[Window, Window]:
    """The window to run the model over so that ``window`` (an extent) of a ``width`` x
    ``height`` px raster comes out as it does in a run over the whole raster, and where
    ``window`` lies inside it.

    Along each axis the grown window spans the whole run's windows that touch ``window`` and
    one more on each side (none beyond the raster's edge): its own windows are then exactly
    those of the whole run, and the ones the extent's pixels see have the whole run's blend
    weights (a run's border windows are weighted flat on their outer half). Costs at most two
    windows of extra pixels on each side.
    """

    def axis(start: int, length: int, size: int) -> tuple[int, int]:
        starts = axis_starts(size, tile, overlap)
        span = min(tile, size)
        first = next(i for i, s in enumerate(starts) if s + span > start)
        last = max(i for i, s in enumerate(starts) if s < start + length)
        first, last = max(0, first - 1), min(len(starts) - 1, last + 1)
        return starts[first], starts[last] + span

    col0, col1 = axis(window.col_off, window.width, width)
    row0, row1 = axis(window.row_off, window.height, height)
    grown = Window(col0, row0, col1 - col0, row1 - row0)
    inner = Window(window.col_off - col0, window.row_off - row0, window.width, window.height)
    return grown, inner


def taper(n: int, at_start_border: bool, at_end_border: bool) -> np.ndarray:
    """1-D Hann taper of ``n`` weights in (0, 1], flat (1) on the halves touching a raster border.

    ``sin^2(pi * (i + 0.5) / n)`` is symmetric, peaks at 1 in the middle and is > 0 at the ends.
    """
    i = np.arange(n, dtype=np.float64)
    w = np.sin(np.pi * (i + 0.5) / n) ** 2
    half = n // 2
    if at_start_border:
        w[:half] = 1.0
    if at_end_border:
        w[half:] = 1.0
    return w.astype(np.float32)


@dataclass(frozen=True)
class TileGrid:
    """All windows over a ``height`` x ``width`` raster, in row-major order."""

    height: int
    width: int
    tile_size: int
    overlap: int

    def __post_init__(self) -> None:
        if self.tile_size < 1:
            raise ValueError(f"tile size must be positive, got {self.tile_size}")

    @property
    def row_starts(self) -> list[int]:
        return axis_starts(self.height, self.tile_size, self.overlap)

    @property
    def col_starts(self) -> list[int]:
        return axis_starts(self.width, self.tile_size, self.overlap)

    @property
    def window_height(self) -> int:
        return min(self.tile_size, self.height)

    @property
    def window_width(self) -> int:
        return min(self.tile_size, self.width)

    def __len__(self) -> int:
        return len(self.row_starts) * len(self.col_starts)

    def __iter__(self) -> Iterator[Window]:
        h, w = self.window_height, self.window_width
        cols = self.col_starts
        for row in self.row_starts:
            for col in cols:
                yield Window(col, row, w, h)

    def weight(self, window: Window) -> np.ndarray:
        """Blend weights ``(h, w)`` float32 of one window (shared: do not modify)."""
        return _weight(
            window.height,
            window.width,
            window.row_off == 0,
            window.row_off + window.height == self.height,
            window.col_off == 0,
            window.col_off + window.width == self.width,
        )


@functools.lru_cache(maxsize=64)
def _weight(h: int, w: int, top: bool, bottom: bool, left: bool, right: bool) -> np.ndarray:
    # At most 9 distinct weights per grid (corner, edge, interior): compute each once.
    weight = np.outer(taper(h, top, bottom), taper(w, left, right))
    weight.flags.writeable = False
    return weight


def overlap_pixels(tile_size: int, overlap_percent: float) -> int:
    """Overlap in pixels from a percentage of the tile size (Deepness ``tiles_overlap``)."""
    if not 0 <= overlap_percent < 100:
        raise ValueError(f"overlap must be a percentage in [0, 100), got {overlap_percent}")
    return int(round(tile_size * overlap_percent / 100.0))


def pad_to_tile(data: np.ndarray, tile: int) -> np.ndarray:
    """Pad the last two axes of ``data`` up to ``tile`` by reflection (symmetric for 1-px axes)."""
    h, w = data.shape[-2:]
    if h == tile and w == tile:
        return data
    pad = [(0, 0)] * (data.ndim - 2) + [(0, tile - h), (0, tile - w)]
    # numpy's reflect needs >= 2 samples and repeats the reflection for pads longer than the axis.
    mode = "reflect" if min(h, w) > 1 else "symmetric"
    return np.pad(data, pad, mode=mode)
