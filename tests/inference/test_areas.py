"""Pixel areas."""

from __future__ import annotations

import math

import numpy as np
import pytest

from swimdiff_geo.inference.areas import row_pixel_areas_m2
from swimdiff_geo.inference.io import CrsInfo, Grid


def test_projected_pixel_area_is_constant():
    grid = Grid(10, 10, (500000.0, 10.0, 0.0, 5e6, 0.0, -10.0), "wkt")
    areas = row_pixel_areas_m2(grid, CrsInfo(is_geographic=False), 0, 10)
    assert (areas == 100.0).all()


def test_geographic_pixel_area_follows_latitude():
    # 0.01 degree pixels from the equator northwards
    grid = Grid(1, 9000, (0.0, 0.01, 0.0, 90.0, 0.0, -0.01), "wkt")
    areas = row_pixel_areas_m2(grid, CrsInfo(is_geographic=True), 0, 9000)
    assert np.all(np.diff(areas) > 0)  # larger towards the equator
    # the whole band from the pole to the equator, 0.01 degree wide: the ellipsoid's
    # quarter-zone area 0.01/360 * 2 pi b^2 (1/(1-e^2) + atanh(e)/e) / 2, computed independently
    a, f = 6378137.0, 1 / 298.257223563
    e = math.sqrt(f * (2 - f))
    b = a * (1 - f)
    hemisphere = 2 * math.pi * b**2 * (1 / (1 - e**2) + math.atanh(e) / e) / 2
    assert areas.sum() == pytest.approx(hemisphere * 0.01 / 360, rel=1e-9)
