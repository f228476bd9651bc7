"""Pixel areas in square metres, for any CRS (numpy only).

Projected CRS: every pixel has the same area, ``|det(geotransform)| * unit^2``.
Geographic CRS: a pixel is a cell between two meridians and two parallels; its area on the
ellipsoid is exact from the authalic-latitude formula, which is what an equal-area projection
would give, without choosing one. Pixel space: no area (None).
"""

from __future__ import annotations

import math

import numpy as np

from .io import CrsInfo, Grid


def row_pixel_areas_m2(grid: Grid, crs: CrsInfo | None, row_off: int, n_rows: int) -> np.ndarray:
    """Area of one pixel in each of ``n_rows`` rows from ``row_off``: float64 ``(n_rows,)`` m^2."""
    x0, dx, rx, y0, ry, dy = grid.transform
    if crs is None:
        raise ValueError("pixel space has no area")
    if not crs.is_geographic:
        return np.full(n_rows, abs(dx * dy - rx * ry) * crs.linear_unit_m**2, dtype=np.float64)
    a = crs.semi_major_m
    f = 1.0 / crs.inverse_flattening
    b = a * (1 - f)
    e = math.sqrt(1 - (b / a) ** 2)

    def q(row: int) -> float:
        # Authalic term of the latitude of a row edge. math, not numpy: numpy's sin/log differ
        # in the last bits across versions, and the QGIS (Debian numpy) and CLI areas must agree.
        s = math.sin(math.radians(min(90.0, max(-90.0, y0 + row * dy))))
        return s / (1 - (e * s) ** 2) + math.log((1 + e * s) / (1 - e * s)) / (2 * e)

    edges = np.array([q(r) for r in range(row_off, row_off + n_rows + 1)], dtype=np.float64)
    # Area of a zone between two parallels per radian of longitude: b^2 / 2 * |q2 - q1|.
    return np.abs(np.diff(edges)) * (b**2 / 2 * math.radians(abs(dx)))
