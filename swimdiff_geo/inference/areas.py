"""Pixel areas in square metres and connected regions, for any CRS (numpy only).

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


def label_regions(mask: np.ndarray, strip_rows: int = 1024) -> tuple[np.ndarray, int]:
    """8-connected regions of a boolean ``(rows, cols)`` mask: int32 labels (0 = background).

    Labels strip by strip and joins regions that continue across strip edges (a union of label
    pairs, solved as graph components), so the only full-size array is the int32 result:
    labelling a whole Sentinel-2 tile at once would take several times its size in scipy's
    temporaries.
    """
    from scipy import ndimage  # lazily: the engine imports only numpy at module level
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    rows, cols = mask.shape
    labels = np.zeros((rows, cols), np.int32)
    structure = np.ones((3, 3), dtype=bool)
    count = 0
    above_labels, below_labels = [], []
    for top in range(0, rows, strip_rows):
        strip = labels[top : top + strip_rows]
        n = ndimage.label(mask[top : top + strip_rows], structure=structure, output=strip)
        if n:
            strip[strip > 0] += count
        if top > 0:
            above, below = labels[top - 1], labels[top]
            for shift in (-1, 0, 1):  # 8-connectivity: straight down and both diagonals
                a = above[max(0, -shift) : cols - max(0, shift)]
                b = below[max(0, shift) : cols - max(0, -shift)]
                touching = (a > 0) & (b > 0)
                above_labels.append(a[touching])
                below_labels.append(b[touching])
        count += n
    if count and above_labels:
        a, b = np.concatenate(above_labels), np.concatenate(below_labels)
        if a.size:
            graph = coo_matrix((np.ones(a.size, bool), (a, b)), shape=(count + 1, count + 1))
            _, component = connected_components(graph, directed=False)
            merged, first = np.unique(component[1:], return_index=True)
            # number the merged regions in order of their first strip label (stable, compact)
            order = np.argsort(first)
            new_id = np.empty(len(merged), np.int32)
            new_id[order] = np.arange(1, len(merged) + 1, dtype=np.int32)
            lookup = np.concatenate([[0], new_id[np.searchsorted(merged, component[1:])]])
            relabel_in_place(labels, lookup.astype(np.int32))
            count = len(merged)
    return labels, int(count)


def relabel_in_place(labels: np.ndarray, lookup: np.ndarray, strip_rows: int = 1024) -> None:
    """``labels[...] = lookup[labels]``, strip by strip: ``np.take(..., out=labels)`` would
    buffer an int64 copy of the whole label image."""
    for top in range(0, labels.shape[0], strip_rows):
        strip = labels[top : top + strip_rows]
        strip[...] = lookup[strip]
