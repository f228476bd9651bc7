"""Connected regions of a scene, found strip by strip (numpy at module level, scipy lazily).

Memory is bounded by the scene's width and its number of regions, never by its height: no
scene-sized array is ever held. Two passes over strips of rows:

1. Each strip is labelled on its own (8-connected regions of equal key), its regions are numbered
   after those of the strips above, and these provisional labels go to a scratch raster. Labels
   that touch across the strip's top edge (with the same key) are recorded as pairs, and each
   label's pixels, area and value sum are accumulated.
2. The pairs are joined (graph components) into regions, regions under the minimum area are
   dropped or merged into a neighbour, and the provisional labels are rewritten strip by strip
   as final region numbers into the raster the polygoniser reads.

Small regions are either dropped (a change mask: a small change becomes "no change") or merged
(a class map: a minimum mapping unit, as GDAL's sieve filter). Merging needs which regions touch,
so the first pass also records the pairs of different labels that are neighbours, with the
length of the edge they share (4-neighbours; diagonal neighbours count as touching with length
0). :func:`merge_small_regions` then works on that graph of regions, never on pixels.

Regions are numbered 1..count in the order in which their first provisional label was given:
strip by strip, within a strip key by key, within a key in raster order (so stable across runs
and backends); 0 is background. Merged regions are numbered in the raster order of their first
pixel, whatever the strip height.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

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
    final: RasterSink | None,
    values_of: Callable[[Window], np.ndarray] | None = None,
    strip_rows: int = 256,
    small_regions: Literal["drop", "merge"] = "drop",
    final_keys: Callable[[Window, np.ndarray], None] | None = None,
) -> SceneRegions:
    """Label the 8-connected regions of equal, non-zero key and write them to ``final``.

    Args:
        read_keys: ``read_keys(window)`` returns the window's keys, ``(rows, cols)``
            non-negative integers: 0 is background, pixels with the same key form regions (1 for
            a change mask; class id + 1 for a class map, so that classes never merge).
        grid: the scene's grid; areas use its geotransform and ``crs``.
        crs: for pixel areas in m^2; None (pixel space) keeps every region, without areas.
        min_area_m2: regions smaller than this are dropped or merged (``small_regions``).
        provisional: an int32 scratch raster on ``grid`` (written, then read back).
        final: an int32 raster on ``grid`` that receives the region numbers (0 = background),
            or None when only ``final_keys`` is wanted.
        values_of: ``values_of(window)`` returns per-pixel values to sum per region (e.g. the
            change probability, for a mean).
        strip_rows: rows per strip; memory grows with ``strip_rows * grid.width`` (a 256-row
            strip of a Sentinel-2 tile needs about 150 MB of temporaries, 1024 rows 530 MB).
        small_regions: ``drop``: a region under ``min_area_m2`` becomes background (0);
            ``merge``: it joins the neighbouring region it shares the longest edge with and
            takes its key (see :func:`merge_small_regions`); a region with no neighbour (an
            island in background) is kept whatever its area.
        final_keys: ``final_keys(window, keys)`` receives every strip's keys once the small
            regions are dropped (0) or merged, ``(rows, cols)`` int64, 0 wherever the input key
            was 0 (to rewrite a mask or class map so that it agrees with the polygons).

    Returns:
        The kept regions' keys, pixel counts, areas and value sums.
    """
    from scipy.sparse import coo_matrix  # lazily: the engine imports only numpy at module level
    from scipy.sparse.csgraph import connected_components

    width = grid.width
    count = 0  # provisional labels so far
    if small_regions not in ("drop", "merge"):
        raise ValueError(f"small_regions must be drop or merge, not {small_regions!r}")
    # merging needs areas and something to merge; else "merge" labels as "drop" keeps all
    merge = small_regions == "merge" and crs is not None and min_area_m2 > 0
    keys, pixels, areas, sums = [np.zeros(1, np.int64)], [np.zeros(1)], [np.zeros(1)], [np.zeros(1)]
    above_labels, below_labels = [], []
    touching_edges: list[tuple[np.ndarray, np.ndarray]] = []  # merge: (pair codes, edge lengths)
    firsts = [np.zeros(1, np.int64)]  # merge: raster index of each label's first pixel
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
        if merge:  # where each label starts, in raster order over the whole scene
            present, first_index = np.unique(flat, return_index=True)
            firsts.append(first_index[present > 0] + top * width)
        labels[labels > 0] += count
        if merge:
            touching_edges.append(_neighbour_pairs(labels))
        if last_labels is not None:
            first_labels, first_keys = labels[0], strip_keys[0]
            for shift in (-1, 0, 1):  # 8-connectivity: straight down and both diagonals
                above = slice(max(0, -shift), width - max(0, shift))
                below = slice(max(0, shift), width - max(0, -shift))
                a, b = last_labels[above], first_labels[below]
                both = (a > 0) & (b > 0)
                same_key = last_keys[above] == first_keys[below]
                above_labels.append(a[both & same_key])
                below_labels.append(b[both & same_key])
                if merge:  # labels of different keys across the strip edge are neighbours
                    other = both & ~same_key
                    touching_edges.append(_edge_lengths(a[other], b[other], float(shift == 0)))
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

    if merge:
        codes, lengths = _sum_pairs(
            np.concatenate([c for c, _ in touching_edges]),
            np.concatenate([w for _, w in touching_edges]),
            region_of,
        )
        region_first = np.full(n_regions + 1, grid.width * grid.height, np.int64)
        np.minimum.at(region_first, region_of, np.concatenate(firsts))
        group_of, key_of_group = merge_small_regions(
            region_area, region_key, region_first, codes >> 32, codes & 0xFFFFFFFF, lengths,
            min_area_m2,
        )  # fmt: skip
        n_groups = len(key_of_group) - 1

        def per_group(values: np.ndarray) -> np.ndarray:
            return np.bincount(group_of, weights=values, minlength=n_groups + 1)

        region_pixels = np.rint(per_group(region_pixels)).astype(np.int64)
        region_area = per_group(region_area)
        region_sum = per_group(region_sum) if region_sum is not None else None
        region_key, region_of, n_regions = key_of_group, group_of[region_of], n_groups
        keep = np.ones(n_regions + 1, bool)
    elif small_regions == "merge" or region_area is None:  # nothing to merge, or no areas
        keep = region_pixels > 0
    else:
        keep = region_area >= min_area_m2
    keep[0] = False
    final_number = np.zeros(n_regions + 1, np.int32)
    final_number[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
    final_of_provisional = final_number[region_of]
    key_of_provisional = np.where(keep, region_key, 0)[region_of]
    for top in range(0, grid.height, strip_rows):
        window = Window(0, top, width, min(strip_rows, grid.height - top))
        strip_labels = provisional.read(window)
        if final is not None:
            final.write(final_of_provisional[strip_labels][None], window)
        if final_keys is not None:
            final_keys(window, key_of_provisional[strip_labels])

    kept = np.concatenate([[0], np.flatnonzero(keep)])
    return SceneRegions(
        count=len(kept) - 1,
        key=region_key[kept],
        pixels=region_pixels[kept],
        area_m2=region_area[kept] if region_area is not None else None,
        value_sum=region_sum[kept] if region_sum is not None else None,
    )


def merge_small_regions(
    area: np.ndarray,
    key: np.ndarray,
    position: np.ndarray,
    edge_a: np.ndarray,
    edge_b: np.ndarray,
    edge_length: np.ndarray,
    min_area: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Merge every region under ``min_area`` into a neighbour, until none that can is left.

    Works in rounds on the graph of regions: each region under ``min_area`` picks the neighbour
    it shares the longest edge with (ties: the larger, then the one that starts first) and
    joins it; what joins takes the key of its largest member (the region of at least
    ``min_area``, if any; else specks merge among themselves). Joined groups
    that then touch a neighbour of the same key are one 8-connected region, so they are joined
    too. A region that cannot reach ``min_area`` because nothing touches it stays as it is.
    Ties are broken by ``position``, never by region number, so the result does not depend on
    how the regions were numbered (e.g. on the strip height).

    Args:
        area: ``(n + 1,)`` area of each region (index 0 unused), any unit of ``min_area``.
        key: ``(n + 1,)`` int64 key of each region.
        position: ``(n + 1,)`` distinct int64 positions of the regions (the raster index of a
            region's first pixel); they break ties and number the groups.
        edge_a, edge_b: ``(m,)`` the regions of each touching pair (1..n, ``edge_a != edge_b``,
            each pair once).
        edge_length: ``(m,)`` the length of their shared edge (0: they touch at corners only).
        min_area: the minimum mapping unit.

    Returns:
        ``group_of``: ``(n + 1,)`` the group of every region (0 -> 0), groups numbered 1..g in
        the order of their first ``position``; ``key_of_group``: ``(g + 1,)`` each group's key
        (index 0: 0).
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    g_area = np.asarray(area, np.float64).copy()
    g_key = np.asarray(key, np.int64).copy()
    g_pos = np.asarray(position, np.int64).copy()
    g_pos[0] = -1  # background first: it keeps number 0
    ea, eb, length = (np.asarray(x) for x in (edge_a, edge_b, edge_length))

    def join(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
        """The group (0..k, in order of first position) of each group after joining src-dst."""
        size = len(g_pos)
        graph = coo_matrix((np.ones(len(src), bool), (src, dst)), shape=(size, size))
        _, component = connected_components(graph, directed=False)
        first = np.full(component.max() + 1, np.iinfo(np.int64).max)
        np.minimum.at(first, component, g_pos)
        rank = np.empty(len(first), np.int64)
        rank[np.argsort(first)] = np.arange(len(first))
        return rank[component]

    group_of = join(ea[:0], eb[:0])  # numbered by position already
    g_area, g_key, g_pos = (_per_group(group_of, v) for v in (g_area, g_key, g_pos))
    ea, eb = group_of[ea], group_of[eb]
    while True:
        src, dst, w = np.concatenate([ea, eb]), np.concatenate([eb, ea]), np.tile(length, 2)
        small = g_area < min_area
        pick = small[src]
        if not pick.any():
            break
        src, dst, w = src[pick], dst[pick], w[pick]
        order = np.lexsort((g_pos[dst], -g_area[dst], -w, src))  # per src, the best one first
        src, dst = src[order], dst[order]
        best = np.r_[True, src[1:] != src[:-1]]
        new_of = join(src[best], dst[best])
        # the key of a joined group: its largest member's (the one of at least min_area, if any:
        # a group holds at most one, as only small groups pick a neighbour)
        by_group = np.lexsort((-g_pos, g_area, new_of))  # per group, the largest last
        last = np.r_[new_of[by_group][1:] != new_of[by_group][:-1], True]
        new_key = g_key[by_group[last]]
        new_pos = _per_group(new_of, g_pos, np.minimum)
        # groups of the same key that now touch are one region
        a, b = new_of[ea], new_of[eb]
        same = (a != b) & (new_key[a] == new_key[b])
        if same.any():
            g_key, g_pos = new_key, new_pos
            again = join(a[same], b[same])
            new_of = again[new_of]
            new_key = _per_group(again, new_key)
            new_pos = _per_group(again, new_pos, np.minimum)
        g_area = np.bincount(new_of, weights=g_area, minlength=len(new_key))
        g_key, g_pos = new_key, new_pos
        group_of = new_of[group_of]
        codes, length = _sum_pairs(_pair_codes(ea, eb), length, new_of)
        ea, eb = codes >> 32, codes & 0xFFFFFFFF
    g_key[0] = 0
    return group_of, g_key


def _per_group(group: np.ndarray, values: np.ndarray, reduce: np.ufunc | None = None) -> np.ndarray:
    """``values`` reduced to one per group: with ``reduce`` (e.g. np.minimum), else any member's
    value (for values every member of a group shares)."""
    if reduce is None:
        out = np.zeros(group.max() + 1, values.dtype)
        out[group] = values
        return out
    out = np.full(group.max() + 1, values.max(), values.dtype)
    reduce.at(out, group, values)
    return out


def _pair_codes(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Unordered pairs of labels < 2**31 as int64 codes ``min << 32 | max``."""
    a, b = a.astype(np.int64), b.astype(np.int64)
    return (np.minimum(a, b) << 32) | np.maximum(a, b)


def _sum_pairs(
    codes: np.ndarray, lengths: np.ndarray, relabel: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Pairs relabelled through ``relabel``, without self-pairs, each once with summed length."""
    a, b = relabel[codes >> 32], relabel[codes & 0xFFFFFFFF]
    other = a != b
    unique, inverse = np.unique(_pair_codes(a[other], b[other]), return_inverse=True)
    return unique, np.bincount(inverse.ravel(), weights=lengths[other], minlength=len(unique))


def _neighbour_pairs(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Touching pairs of different non-zero labels within one strip (right, down and both
    diagonals), as pair codes with their shared edge length (diagonals: 0)."""
    steps = [
        ((slice(None), slice(0, -1)), (slice(None), slice(1, None)), 1.0),  # right
        ((slice(0, -1), slice(None)), (slice(1, None), slice(None)), 1.0),  # down
        ((slice(0, -1), slice(0, -1)), (slice(1, None), slice(1, None)), 0.0),  # down right
        ((slice(0, -1), slice(1, None)), (slice(1, None), slice(0, -1)), 0.0),  # down left
    ]
    codes, lengths = [], []
    for from_here, to_there, length in steps:
        a, b = labels[from_here], labels[to_there]
        touching = (a != b) & (a > 0) & (b > 0)
        pair_codes, pair_lengths = _edge_lengths(a[touching], b[touching], length)
        codes.append(pair_codes)
        lengths.append(pair_lengths)
    return np.concatenate(codes), np.concatenate(lengths)


def _edge_lengths(a: np.ndarray, b: np.ndarray, length: float) -> tuple[np.ndarray, np.ndarray]:
    """Pixel pairs ``a[i]``-``b[i]`` of one direction as pair codes, each once, with the edge
    they share: ``length`` per pixel pair (1 side by side, 0 corner to corner)."""
    codes, counts = np.unique(_pair_codes(a, b), return_counts=True)
    return codes, counts * length


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
