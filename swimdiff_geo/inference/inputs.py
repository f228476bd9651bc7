"""Opening inputs for a job: band selection against the model and bi-temporal alignment."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..bands import normalize_band_name
from .band_files import (
    BandFiles,
    BandStackSource,
    find_band_files,
    folder_of_band_file,
    open_band_stack,
    product_of_band_file,
)
from .contract import ModelContract
from .errors import InputError
from .io import Grid, RasterBackend, RasterSource, Window

Log = Callable[[str], None]


def open_input(
    backend: RasterBackend,
    path: str,
    log: Log | None = None,
    mask_clouds: bool = False,
    files: BandFiles | None = None,
) -> RasterSource:
    """Open an input: a raster file, or the band files of a Sentinel-2 product or of a folder
    (:mod:`.band_files`), stacked on the finest band's grid; ``log`` hears what was stacked.

    ``mask_clouds``: pixels the product's cloud mask flags are invalid; an input without a
    cloud mask is read as it is, with a warning. ``files``: ``path``'s band files when the
    caller has found them already.
    """
    files = files or find_band_files(path)
    if files is None:
        if mask_clouds and log is not None:
            log(f"warning: {path}: {NO_CLOUD_MASK}")
        return backend.open(path)
    source = open_band_stack(backend, files, mask_clouds=mask_clouds)
    if log is not None:
        grid = source.grid
        log(
            f"info: {path}: {files.summary()}; read on the grid of {source.grid_band} "
            f"({grid.width}x{grid.height} px), the other bands resampled bilinearly"
        )
        if mask_clouds:
            if files.cloud_mask:
                log(f"info: {path}: pixels its cloud mask flags (opaque clouds, cirrus) are nodata")
            else:
                log(f"warning: {path}: {NO_CLOUD_MASK}")
        if files.warning:
            log(f"warning: {path}: {files.warning}")
    return source


NO_CLOUD_MASK = (
    "no cloud mask to apply (only Sentinel-2 products of processing baseline 04.00 and later "
    "carry one as a raster, QI_DATA/MSK_CLASSI_B00.jp2); clouds are not masked"
)


def open_input_on_grid(backend: RasterBackend, source: RasterSource, grid: Grid) -> RasterSource:
    """``source`` (from :func:`open_input`) again, warped (bilinear) onto ``grid``."""
    if isinstance(source, BandStackSource):
        return open_band_stack(backend, source.files, grid, source.mask_clouds)
    return backend.open_on_grid(source.path, grid)


def select_bands(
    source: RasterSource, contract: ModelContract, explicit: Sequence[int] | None = None
) -> list[int]:
    """1-based band indices of ``source`` in the model's band order.

    ``explicit`` (``--bands 2,3,4,8``) wins; otherwise band descriptions that name every model
    band order them (names compared through :func:`~swimdiff_geo.bands.normalize_band_name`:
    ``b1`` = ``B01``); otherwise the band count must equal the model's and the bands are taken
    in order, unless the descriptions name some of the model's bands but not all: then the
    raster says it holds other bands (a NAIP RED GREEN BLUE NIR image given to a SWIR1 NIR RED
    GREEN model), and taking them in order would feed RED in as SWIR1.
    """
    want = contract.bands
    if explicit:
        bands = [int(b) for b in explicit]
        if len(bands) != len(want):
            raise InputError(
                source.path,
                f"--bands lists {len(bands)} bands but the model takes {len(want)} "
                f"({', '.join(want)})",
            )
        bad = [b for b in bands if not 1 <= b <= source.count]
        if bad:
            raise InputError(
                source.path,
                f"--bands {bad[0]} is out of range: the raster has {source.count} bands",
            )
        return bands
    keys = [normalize_band_name(d or "") for d in source.band_descriptions]
    want_keys = [normalize_band_name(w) for w in want]
    if all(k in keys for k in want_keys):
        return [keys.index(k) + 1 for k in want_keys]
    described = [d.strip() for d in source.band_descriptions if d and d.strip()]
    blank = [str(i) for i, d in enumerate(source.band_descriptions, 1) if not (d and d.strip())]
    hint = ""
    if described:  # and which bands have no description, where that is why a band is missing
        hint = f" (its band descriptions: {', '.join(described)}"
        hint += f"; none on band {', '.join(blank)})" if blank else ")"
    missing = [w for w, k in zip(want, want_keys, strict=True) if k not in keys]
    if len(missing) < len(want):
        raise InputError(
            source.path,
            f"lacks band{'s' if len(missing) > 1 else ''} {', '.join(missing)}{hint}; the model "
            f"takes {', '.join(want)}. If the descriptions are wrong, map the bands with --bands",
        )
    if source.count == len(want):
        return list(range(1, source.count + 1))
    product = product_of_band_file(source.path)
    folder = None if product else folder_of_band_file(source.path)
    if product or folder:  # one file of many: say what to give instead
        if product:
            what = f"one band file of the Sentinel-2 product {product}"
            give = (
                "the product itself (its folder or ZIP, docs/inputs.md), which is read with "
                "all its bands"
            )
        else:
            what = f"one of the band files in {folder}"
            give = (
                "the folder, which is read with all its band files, or their stack "
                "(`swimdiff-geo stack`; in QGIS: Stack Sentinel-2 bands)"
            )
        raise InputError(
            source.path,
            f"is {what}; the model takes {len(want)} bands ({', '.join(want)}): give {give}",
        )
    raise InputError(
        source.path,
        f"has {source.count} bands{hint} but the model takes {len(want)}: {', '.join(want)}; "
        "name the bands in the raster or map them with --bands",
    )


# How far the typical band may sit from the training mean before the input's units are suspect:
# the 48 OSCD images sit at 0.62-2.1x the bundled change model's means (benchmarks/
# value_scale_oscd.py); reflectance (0-1) given to a digital-number model is 10,000x off, an
# 8-bit rendering of Sentinel-2 about 10x (34 of those 48 images warn).
SCALE_RATIO_LIMIT = 10.0


def typical_band_ratio(medians: np.ndarray, means: np.ndarray) -> tuple[float, np.ndarray] | None:
    """The median over bands of ``medians / means`` (per-band values in model input units, and
    the training means), with the mask of the bands it used; None when no band informs.

    Bands whose training mean is near zero (Sentinel-2 B10, cirrus) say nothing about scale.
    """
    if np.max(means) <= 0:
        return None
    informative = means > 0.05 * np.max(means)
    return float(np.median(medians[informative] / means[informative])), informative


def value_scale_warning(
    source: RasterSource, bands: Sequence[int], contract: ModelContract, samples: int = 3
) -> str | None:
    """A warning when ``source``'s pixel values are on another scale than the model's training
    data, e.g. reflectance 0-1 or 8-bit display values given to a model of digital numbers.

    Reads ``samples`` x ``samples`` windows of up to 64 px spread over the raster (cheap on any
    size) and compares each band's median, times ``input_scale``, with the training data's band
    means (the model's ``input_band_means``, else its ``standardization_mean``); the typical
    band's ratio (median over bands) outside ``[1/SCALE_RATIO_LIMIT, SCALE_RATIO_LIMIT]`` warns.
    Models with neither are not checked (nothing says what their inputs looked like).
    """
    means = np.asarray(contract.input_band_means or contract.standardization_mean, np.float64)
    if means.size != len(bands):
        return None
    pixels = sample_pixels(source, bands, samples)
    if pixels.shape[1] < 100:
        return None
    medians = np.median(pixels, axis=1) * contract.input_scale
    typical = typical_band_ratio(medians, means)
    if typical is None or 1 / SCALE_RATIO_LIMIT <= typical[0] <= SCALE_RATIO_LIMIT:
        return None
    ratio, informative = typical
    if ratio <= 0:
        how = "zero or negative, unlike"
    else:
        how = f"{1 / ratio:,.0f}x smaller than" if ratio < 1 else f"{ratio:,.0f}x larger than"
    return (
        f"warning: {source.path}: pixel values look {how} the model's training data "
        f"(typical band median x input_scale {contract.input_scale:g} = "
        f"{float(np.median(medians[informative])):.4g}, training mean "
        f"{float(np.median(means[informative])):.4g}); check the input's units (reflectance "
        "0-1 or an 8-bit rendering instead of the digital numbers the model was trained on?) "
        "and band order; the results are unlikely to mean anything"
    )


def sample_pixels(source: RasterSource, bands: Sequence[int], samples: int = 3) -> np.ndarray:
    """Valid pixels of ``samples`` x ``samples`` windows of up to 64 px spread over ``source``
    (cheap on any size): float32 ``(len(bands), n)``, raw values."""
    grid = source.grid
    size = min(64, grid.width, grid.height)
    values = []
    for i in range(samples):
        for j in range(samples):
            row = (grid.height - size) * (2 * i + 1) // (2 * samples)
            col = (grid.width - size) * (2 * j + 1) // (2 * samples)
            data, valid = source.read(Window(col, row, size, size), bands)
            # all-zero fill and NaN are not values
            valid &= np.any(data != 0, axis=0) & np.all(np.isfinite(data), axis=0)
            values.append(data[:, valid])
    return np.concatenate(values, axis=1)


# Sentinel-2 B10 (1375 nm, cirrus) sees almost nothing through the water vapour: its median
# digital number is 8 to 52 in all 48 OSCD images (benchmarks/s2_offset_effect.py --b10). From
# processing baseline 04.00 on ESA adds 1000 to every digital number, so a product stacked by
# hand without removing it has a B10 median above 1000.
NEW_BASELINE_B10_MEDIAN = 800.0


def b10_median(source: RasterSource, bands: Sequence[int], contract: ModelContract) -> float | None:
    """The median raw value of ``source``'s B10 (cirrus band) over :func:`sample_pixels`' windows,
    ``bands`` being the band indices :func:`select_bands` chose; None when the model takes no
    B10 or fewer than 100 valid pixels were sampled."""
    keys = [normalize_band_name(b) for b in contract.bands]
    if "B10" not in keys:
        return None
    pixels = sample_pixels(source, [bands[keys.index("B10")]])
    return float(np.median(pixels)) if pixels.shape[1] >= 100 else None


def new_baseline_warning(
    source: RasterSource, bands: Sequence[int], contract: ModelContract
) -> str | None:
    """A warning when a raster fed to a Sentinel-2 model that takes B10 looks like a product of
    processing baseline 04.00 or later stacked without removing its +1000 offset (its B10
    median at least :data:`NEW_BASELINE_B10_MEDIAN`). Products read as products
    (:mod:`.band_files`) have the offset removed and are not checked."""
    if isinstance(source, BandStackSource):
        return None
    median = b10_median(source, bands, contract)
    if median is None or median < NEW_BASELINE_B10_MEDIAN:
        return None
    return (
        f"warning: {source.path}: its B10 (cirrus) median is {median:,.0f}, where Sentinel-2 "
        "images before processing baseline 04.00 have about 10 to 50: this looks like a "
        "product of 2022 or later stacked without removing the +1000 ESA adds to every digital "
        "number. Give the product itself (SAFE folder or ZIP, which the reader corrects) or "
        "subtract 1000 from every band; as it is, the results mean little (docs/inputs.md)"
    )


# Thin cirrus on one date raises Sentinel-2 B10 (1375 nm) by tens of digital numbers: OSCD's
# Paris scene of 2017-08-29 (saclay_e, saclay_w, bercy) lies 29-39 DN (0.003-0.004 reflectance)
# above its first date, while the other 21 OSCD pairs differ by at most 8 DN
# (benchmarks/atmospheric_bands_probe.py). The bundled change model finds almost no change
# under it (saclay_e: recall 0.03), having learnt from bercy that a B10 shift means weather.
CIRRUS_B10_DIFFERENCE = 0.0015  # reflectance (15 DN): between 8 DN and 29 DN


def cirrus_difference_warning(
    a: RasterSource,
    bands_a: Sequence[int],
    b: RasterSource,
    bands_b: Sequence[int],
    contract: ModelContract,
) -> str | None:
    """A warning when the B10 (cirrus) medians of a change model's two dates differ by at least
    :data:`CIRRUS_B10_DIFFERENCE` reflectance (thin cirrus over one date), for models that take
    B10; ``bands_a``/``bands_b`` are the 1-based band indices :func:`select_bands` chose. A
    date whose B10 looks offset by a new processing baseline (:func:`new_baseline_warning`) is
    not taken for cirrus."""
    raw = [b10_median(a, bands_a, contract), b10_median(b, bands_b, contract)]
    if None in raw:
        return None
    medians = [value * contract.input_scale for value in raw]
    if abs(medians[1] - medians[0]) < CIRRUS_B10_DIFFERENCE:
        return None
    if max(medians) >= NEW_BASELINE_B10_MEDIAN * contract.input_scale:
        return None  # a new product's +1000 offset, not cirrus: new_baseline_warning says so
    hazy, clear = (1, 0) if medians[1] > medians[0] else (0, 1)
    scale = contract.input_scale
    return (
        f"warning: {(a, b)[hazy].path}: thin cirrus over this date? Its B10 (cirrus band) "
        f"median is {medians[hazy] / scale:,.4g} against {medians[clear] / scale:,.4g} on the "
        f"other date ({medians[hazy]:.4f} against {medians[clear]:.4f} reflectance), where clear "
        f"pairs differ by less than {CIRRUS_B10_DIFFERENCE:g}. Expect change under the cirrus "
        "to be missed (the bundled change model's recall on such a pair: 0.03, docs/models.md); "
        "choose a clearer date, or give the product with --mask-clouds where its cloud mask "
        "flags the cirrus"
    )


def input_warnings(
    source: RasterSource, bands: Sequence[int], contract: ModelContract
) -> list[str]:
    """What a job warns about an input it can read: values on another scale than the model's
    training data (:func:`value_scale_warning`), a new Sentinel-2 product stacked without its
    offset removed (:func:`new_baseline_warning`)."""
    warnings = (
        value_scale_warning(source, bands, contract),
        new_baseline_warning(source, bands, contract),
    )
    return [w for w in warnings if w]


def _pixel_window(grid: Grid, bounds: tuple[float, float, float, float]) -> Window | None:
    """The window of ``grid`` covering ``bounds`` (pixels at least half inside), or None."""
    x0, dx, _, y0, _, dy = grid.transform
    left, bottom, right, top = bounds
    c0, c1 = sorted(((left - x0) / dx, (right - x0) / dx))
    r0, r1 = sorted(((top - y0) / dy, (bottom - y0) / dy))
    col0, col1 = max(0, round(c0)), min(grid.width, round(c1))
    row0, row1 = max(0, round(r0)), min(grid.height, round(r1))
    if col1 <= col0 or row1 <= row0:
        return None
    return Window(col0, row0, col1 - col0, row1 - row0)


def _items(value: str | Sequence[Any]) -> list[Any]:
    """A list as it is; text split at commas, semicolons and spaces ("1,2", "1 2", "1, 2,")."""
    if isinstance(value, (list, tuple)):
        return list(value)
    return [v for v in re.split(r"[,;\s]+", str(value).strip()) if v]


def parse_band_numbers(value: str | Sequence[Any]) -> list[int]:
    """``"2,3,4,8"`` (or ``"2 3 4 8"``, or a list) -> 1-based raster band numbers; ValueError
    saying what is wrong. The one reading of --bands, QGIS's BANDS and a manifest's bands."""
    items = _items(value)
    try:
        if any(isinstance(b, bool) or (isinstance(b, float) and not b.is_integer()) for b in items):
            raise ValueError
        bands = [int(b.strip()) if isinstance(b, str) else int(b) for b in items]
    except (TypeError, ValueError):
        raise ValueError(
            f'expected band numbers separated by commas or spaces (e.g. "2,3,4,8"), got {value!r}'
        ) from None
    if not bands or any(b < 1 for b in bands):
        raise ValueError(f"band numbers start at 1, got {value!r}")
    return bands


def parse_band_names(value: str | Sequence[Any]) -> list[str]:
    """``"B04,B03,B02"`` (or spaces, or a list) -> band names; ValueError when none is given."""
    names = [str(n).strip() for n in _items(value) if str(n).strip()]
    if not names:
        raise ValueError(
            f'expected band names separated by commas (e.g. "B04,B03,B02"), got {value!r}'
        )
    return names


def parse_extent(text: str | Sequence[float]) -> tuple[float, float, float, float]:
    """``"left,bottom,right,top"`` (commas or spaces) or four numbers -> a checked tuple;
    ValueError naming what is wrong."""
    try:
        values = tuple(float(v) for v in _items(text))
    except (TypeError, ValueError):
        values = ()
    if len(values) != 4 or not all(math.isfinite(v) for v in values):
        raise ValueError(f"expected four numbers left,bottom,right,top, got {text!r}")
    left, bottom, right, top = values
    if not (left < right and bottom < top):
        raise ValueError(f"expected left < right and bottom < top, got {text!r}")
    return left, bottom, right, top


def extent_window(
    backend: RasterBackend,
    grid: Grid,
    extent: Sequence[float],
    extent_crs: str,
    path: str,
) -> Window:
    """The window of ``grid`` (the grid of input ``path``) whose pixel centres lie inside
    ``extent`` ``(left, bottom, right, top)`` in ``extent_crs``.

    Raises ValueError for an extent that is not four numbers with left < right and bottom <
    top; InputError for a CRS the backend cannot parse, an input without georeferencing, or an
    extent holding no pixel.
    """
    left, bottom, right, top = parse_extent(extent)
    if not grid.georeferenced:
        raise InputError(path, "is not georeferenced, so an extent cannot be located in it")
    try:
        bounds = backend.transform_bounds((left, bottom, right, top), extent_crs, grid.crs_wkt)
    except Exception as exc:  # each backend's own CRS error
        raise InputError(
            None, f"extent CRS {extent_crs!r} is not a CRS (give e.g. EPSG:4326 or a WKT): {exc}"
        ) from exc
    window = _pixel_window(grid, bounds) if all(map(math.isfinite, bounds)) else None
    if window is None:
        crs = backend.crs_name(grid.crs_wkt)
        footprint = ", ".join(f"{v:.6g}" for v in grid.bounds)
        raise InputError(
            path,
            f"holds no pixel of the extent {', '.join(f'{v:g}' for v in extent)} "
            f"({extent_crs}); its footprint is {footprint} in {crs}",
        )
    return window


def align_pair(
    backend: RasterBackend, a: RasterSource, b: RasterSource, log: Log
) -> tuple[Grid, RasterSource, tuple[int, int], RasterSource]:
    """Bring date B onto date A's grid, restricted to the intersection of their footprints.

    Returns ``(grid, a, a_offset, b_on_grid)``: the output grid (A's grid cut to the
    intersection), A and the (col, row) offset of the grid inside it, and B readable on the
    grid (B itself when it is on A's grid already, else a bilinear warped view).
    """
    ga, gb = a.grid, b.grid
    if not ga.georeferenced and not gb.georeferenced:
        if (ga.width, ga.height) != (gb.width, gb.height):
            raise InputError(
                b.path,
                f"neither date is georeferenced and the sizes differ ({ga.width}x{ga.height} "
                f"in {a.path}, {gb.width}x{gb.height} here): cannot align them",
            )
        log(
            "warning: neither input is georeferenced; they are assumed to be co-registered "
            "pixel for pixel and outputs are in pixel coordinates without a CRS"
        )
        return ga, a, (0, 0), b
    if ga.georeferenced != gb.georeferenced:
        lacking = a if not ga.georeferenced else b
        other = b if lacking is a else a
        raise InputError(
            lacking.path,
            f"is not georeferenced but {other.path} is: cannot align them "
            "(georeference it, e.g. with gdal_translate -a_srs/-a_ullr)",
        )
    for src in (a, b):
        t = src.grid.transform
        if t[2] != 0 or t[4] != 0:
            raise InputError(src.path, "has a rotated geotransform; warp it north-up first")
    same_crs = backend.same_crs(ga.crs_wkt, gb.crs_wkt)
    if same_crs and ga.same_pixels(gb):
        return ga, a, (0, 0), b
    b_bounds = (
        gb.bounds if same_crs else backend.transform_bounds(gb.bounds, gb.crs_wkt, ga.crs_wkt)
    )
    window = _pixel_window(ga, b_bounds)
    if window is None:
        raise InputError(
            b.path,
            f"does not overlap {a.path} "
            f"(footprints are disjoint in {backend.crs_name(ga.crs_wkt)})",
        )
    grid = ga.subgrid(window)
    how = "reprojected" if not same_crs else "resampled"
    log(
        f"info: {b.path} is {how} onto the grid of {a.path} (bilinear); "
        f"working on their intersection, {grid.width}x{grid.height} px"
    )
    return grid, a, (window.col_off, window.row_off), open_input_on_grid(backend, b, grid)
