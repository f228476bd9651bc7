"""Window grids and blend weights."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from swimdiff_geo.inference.io import Window
from swimdiff_geo.inference.tiling import (
    TileGrid,
    axis_starts,
    pad_to_tile,
    taper,
    window_on_tile_lattice,
)


@settings(max_examples=200, deadline=None)
@given(length=st.integers(1, 500), tile=st.integers(1, 128), data=st.data())
def test_windows_cover_every_pixel_and_stay_inside(length, tile, data):
    overlap = data.draw(st.integers(0, tile - 1))
    starts = axis_starts(length, tile, overlap)
    size = min(tile, length)
    covered = np.zeros(length, bool)
    for s in starts:
        assert 0 <= s and s + size <= length  # never reads past an edge
        covered[s : s + size] = True
    assert covered.all()
    assert starts == sorted(set(starts))
    if length > tile:
        assert starts[-1] == length - tile  # the last window is shifted inside
        steps = np.diff(starts)
        assert (steps <= tile - overlap).all()


@settings(max_examples=500, deadline=None)
@given(size=st.integers(1, 600), tile=st.integers(2, 128), data=st.data())
def test_an_extent_runs_on_windows_of_the_whole_run(size, tile, data):
    """Along one axis: the grown window holds the extent, and every pixel of the extent is
    blended from the same windows with the same weights as in the whole run."""
    overlap = data.draw(st.integers(0, tile - 1))
    start = data.draw(st.integers(0, size - 1))
    length = data.draw(st.integers(1, size - start))
    grown, inner = window_on_tile_lattice(Window(start, 0, length, 1), size, 1, tile, overlap)
    lo, hi = grown.col_off, grown.col_off + grown.width
    assert lo <= start and start + length <= hi <= size and inner.col_off == start - lo

    def blend(offset: int, length_: int) -> dict[int, set[tuple[int, float]]]:
        """pixel -> {(window start, weight)} of a run over [offset, offset + length_)."""
        span = min(tile, length_)
        seen: dict[int, set[tuple[int, float]]] = {}
        for s in axis_starts(length_, tile, overlap):
            weights = taper(span, s == 0, s + span == length_)
            for i in range(span):
                seen.setdefault(offset + s + i, set()).add((offset + s, float(weights[i])))
        return seen

    whole, run = blend(0, size), blend(lo, hi - lo)
    for pixel in range(start, start + length):
        assert run[pixel] == whole[pixel]


def test_taper_is_positive_and_flat_at_raster_borders():
    inner = taper(64, False, False)
    assert (inner > 0).all() and inner.max() <= 1.0
    assert inner[0] < 0.01 and inner[31] > 0.99  # tapered where a neighbour takes over
    top = taper(64, True, False)
    assert (top[:32] == 1.0).all() and np.allclose(top[32:], inner[32:])
    both = taper(64, True, True)
    assert (both == 1.0).all()


def test_tile_grid_weights_match_window_position():
    grid = TileGrid(height=100, width=70, tile_size=32, overlap=8)
    windows = list(grid)
    assert len(windows) == len(grid)
    first, last = windows[0], windows[-1]
    assert (first.row_off, first.col_off) == (0, 0)
    assert (last.row_off + last.height, last.col_off + last.width) == (100, 70)
    w = grid.weight(first)
    assert w[0, 0] == 1.0  # corner of the raster: no taper
    assert w[-1, -1] < 0.01  # interior corner: tapered


def test_pad_to_tile_reflects_and_keeps_the_original():
    data = np.arange(2 * 3 * 5, dtype=np.float32).reshape(2, 3, 5)
    padded = pad_to_tile(data, 8)
    assert padded.shape == (2, 8, 8)
    np.testing.assert_array_equal(padded[:, :3, :5], data)
    one_pixel = pad_to_tile(np.ones((1, 1, 1), np.float32), 4)
    assert one_pixel.shape == (1, 4, 4) and (one_pixel == 1).all()
