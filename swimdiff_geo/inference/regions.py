"""Connected regions of a scene, found strip by strip (numpy at module level, scipy lazily).

Memory is bounded by the scene's width and its number of regions, never by its height: no
scene-sized array is ever held. Two passes over strips of rows:

1. Each strip is labelled on its own (8-connected regions of equal key), its regions are numbered
   after those of the strips above, and these provisional labels go to a scratch raster. Labels
   that touch across the strip's top edge (with the same key) are recorded as pairs, and each
   label's pixels, area and value sum are accumulated.
2. The pairs are joined (graph components) into regions, regions under the minimum area are
   dropped, and the provisional labels are rewritten strip by strip as final region numbers
   into the raster the polygoniser reads.

Regions are numbered 1..count in the order in which their first provisional label was given:
strip by strip, within a strip key by key, within a key in raster order (so stable across runs
and backends); 0 is background.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .areas import row_pixel_areas_m2
from .io import CrsInfo, Grid, RasterSink, Window

_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


@dataclass
class SceneRegions:
    """Per-region values, arrays of length ``count + 1`` indexed by region number (0 unused)."""

    count: int
    key: np.ndarray  # int64: the key every pixel of the region has
    pixels: np.ndarray  # int64
    area_m2: np.ndarray | None  # float64; None for a scene in pixel space
    value_sum: np.ndarray | None  # float64 sum of ``values_of`` over the region's pixels


def label_scene_regions(
    read_keys: Callable[[Window], np.ndarray],
    grid: Grid,
    crs: CrsInfo | None,
    min_area_m2: float,
    provisional: RasterSink,
    final: RasterSink,
    values_of: Callable[[Window], np.ndarray] | None = None,
    strip_rows: int = 256,
) -> SceneRegions:
    """Label the 8-connected regions of equal, non-zero key and write them to ``final``.

    Args:
        read_keys: ``read_keys(window)`` returns the window's keys, ``(rows, cols)``
            non-negative integers: 0 is background, pixels with the same key form regions (1 for
            a change mask; class id + 1 for a class map, so that classes never merge).
        grid: the scene's grid; areas use its geotransform and ``crs``.
        crs: for pixel areas in m^2; None (pixel space) keeps every region, without areas.
        min_area_m2: regions smaller than this are dropped (labelled 0 in ``final``).
        provisional: an int32 scratch raster on ``grid`` (written, then read back).
        final: an int32 raster on ``grid`` that receives the region numbers (0 = background).
        values_of: ``values_of(window)`` returns per-pixel values to sum per region (e.g. the
            change probability, for a mean).
        strip_rows: rows per strip; memory grows with ``strip_rows * grid.width`` (a 256-row
            strip of a Sentinel-2 tile needs about 150 MB of temporaries, 1024 rows 530 MB).

    Returns:
        The kept regions' keys, pixel counts, areas and value sums.
    """
    from scipy.sparse import coo_matrix  # lazily: the engine imports only numpy at module level
    from scipy.sparse.csgraph import connected_components

    width = grid.width
    count = 0  # provisional labels so far
    keys, pixels, areas, sums = [np.zeros(1, np.int64)], [np.zeros(1)], [np.zeros(1)], [np.zeros(1)]
    above_labels, below_labels = [], []
    last_labels = last_keys = None
    for top in range(0, grid.height, strip_rows):
        window = Window(0, top, width, min(strip_rows, grid.height - top))
        strip_keys = np.asarray(read_keys(window)).astype(np.intp, copy=False)
        labels, n = _label_equal_keys(strip_keys)
        flat = labels.ravel()
        pixels.append(np.bincount(flat, minlength=n + 1)[1:])
        key_of = np.zeros(n + 1, np.int64)
        key_of[flat] = strip_keys.ravel()  # every pixel of a label has the same key
        keys.append(key_of[1:])
        if crs is not None:
            row_areas = row_pixel_areas_m2(grid, crs, top, window.height)
            weights = np.repeat(row_areas, width)
            areas.append(np.bincount(flat, weights=weights, minlength=n + 1)[1:])
        if values_of is not None:
            weights = np.asarray(values_of(window), np.float64).ravel()
            sums.append(np.bincount(flat, weights=weights, minlength=n + 1)[1:])
        labels[labels > 0] += count
        if last_labels is not None:
            first_labels, first_keys = labels[0], strip_keys[0]
            for shift in (-1, 0, 1):  # 8-connectivity: straight down and both diagonals
                above = slice(max(0, -shift), width - max(0, shift))
                below = slice(max(0, shift), width - max(0, -shift))
                a, b = last_labels[above], first_labels[below]
                touching = (a > 0) & (b > 0) & (last_keys[above] == first_keys[below])
                above_labels.append(a[touching])
                below_labels.append(b[touching])
        last_labels, last_keys = labels[-1].copy(), strip_keys[-1].copy()
        provisional.write(labels[None], window)
        count += n

    # Join provisional labels into regions, numbered by their first provisional label.
    a = np.concatenate(above_labels) if above_labels else np.zeros(0, np.int32)
    b = np.concatenate(below_labels) if below_labels else np.zeros(0, np.int32)
    graph = coo_matrix((np.ones(a.size, bool), (a, b)), shape=(count + 1, count + 1))
    _, component = connected_components(graph, directed=False)
    merged, first = np.unique(component[1:], return_index=True)
    rank = np.empty(len(merged), np.int64)
    rank[np.argsort(first)] = np.arange(1, len(merged) + 1)
    region_of = np.concatenate([[0], rank[np.searchsorted(merged, component[1:])]])
    n_regions = len(merged)

    def per_region(parts: list[np.ndarray]) -> np.ndarray:
        return np.bincount(region_of, weights=np.concatenate(parts), minlength=n_regions + 1)

    region_pixels = np.rint(per_region(pixels)).astype(np.int64)
    region_key = np.zeros(n_regions + 1, np.int64)
    region_key[region_of] = np.concatenate(keys)
    region_area = per_region(areas) if crs is not None else None
    region_sum = per_region(sums) if values_of is not None else None

    keep = region_area >= min_area_m2 if region_area is not None else region_pixels > 0
    keep[0] = False
    final_number = np.zeros(n_regions + 1, np.int32)
    final_number[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
    final_of_provisional = final_number[region_of]
    for top in range(0, grid.height, strip_rows):
        window = Window(0, top, width, min(strip_rows, grid.height - top))
        final.write(final_of_provisional[provisional.read(window)][None], window)

    kept = np.concatenate([[0], np.flatnonzero(keep)])
    return SceneRegions(
        count=len(kept) - 1,
        key=region_key[kept],
        pixels=region_pixels[kept],
        area_m2=region_area[kept] if region_area is not None else None,
        value_sum=region_sum[kept] if region_sum is not None else None,
    )


def _label_equal_keys(keys: np.ndarray) -> tuple[np.ndarray, int]:
    """8-connected regions of equal non-zero key in one strip: int32 labels 1..n, 0 elsewhere."""
    from scipy import ndimage

    labels = np.zeros(keys.shape, np.int32)
    present = np.flatnonzero(np.bincount(keys.ravel()))  # keys are small non-negative ints
    present = present[present > 0]
    if len(present) == 1:  # one key (a change mask): label in place, no temporaries
        return labels, int(ndimage.label(keys == present[0], _EIGHT_CONNECTED, output=labels))
    n = 0
    for key in present:
        key_labels, m = ndimage.label(keys == key, structure=_EIGHT_CONNECTED)
        inside = key_labels > 0
        labels[inside] = key_labels[inside] + n
        n += m
    return labels, n
