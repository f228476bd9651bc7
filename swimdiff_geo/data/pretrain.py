"""Pretraining data: random windows cut from GeoTIFF archives, each with its scene id and date.

Rasters are never loaded whole: every sample is a windowed read. Four source layouts:

- ``manifest``: a CSV with columns ``path,scene_id[,date]`` (paths relative to the CSV's folder);
  rows sharing a scene id are the same place (e.g. several dates). ``scene_grid`` (pixels)
  optionally splits each raster into a grid of scenes.
- ``folder``: every ``*.tif``/``*.tiff`` under a folder is one scene (its relative path without
  suffix); a date is parsed from the file name (``YYYYMMDD`` or ``YYYY-MM-DD``) when present.
- ``oscd``: the OSCD download as distributed (per-band files at 10/20/60 m, resampled to the
  10 m B02 grid by :class:`swimdiff_geo.data.oscd.OSCDCity`), both dates of every city,
  labelled or not; one scene per city.
- ``ssl4eo``: SSL4EO-S12 / SeCo layout ``<root>[/s2c]/<location>/<acquisition>/<band>.tif``
  (band files named ``B1``.. ``B12``, ``B8A``, or zero-padded ``B01``); one scene per location,
  the date parsed from the acquisition folder name.

A sample is a dict: ``view1``/``view2`` float32 (C, w, w) scaled bands (DN * input_scale),
``scene_id`` int64, ``date1``/``date2`` strings, ``source`` int (index into ``sources``),
``window`` int64 (row, col) of view1's top-left pixel, ``valid`` bool (w, w): view1's pixels that
are not nodata (see :func:`valid_pixels`). With ``temporal=True`` view2 is
the same place at another date of the scene (when the scene has one), else the same window.
Augmentation happens later, on the batch (:mod:`swimdiff_geo.data.augment`).
"""

from __future__ import annotations

import csv
import logging
import os
import re
from collections import OrderedDict, defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import rasterio
import torch
from rasterio.enums import Resampling
from rasterio.windows import Window, from_bounds
from rasterio.windows import bounds as window_bounds
from torch.utils.data import Dataset

from swimdiff_geo.bands import SENTINEL2_L1C, normalize_band_name

logger = logging.getLogger(__name__)

FORMATS = ("auto", "oscd", "manifest", "folder", "ssl4eo")
_DATE_PATTERNS = (
    re.compile(r"(?<!\d)((?:19|20)\d{2})(\d{2})(\d{2})(?!\d)"),
    re.compile(r"(?<!\d)((?:19|20)\d{2})-(\d{2})-(\d{2})(?!\d)"),
)

__all__ = [
    "FORMATS",
    "BandFilesSource",
    "GeoTiffSource",
    "OSCDSource",
    "PretrainDataError",
    "PretrainWindowDataset",
    "RasterSource",
    "build_sources",
    "compute_band_stats",
    "detect_format",
    "normalize_band_name",
    "valid_pixels",
]


class PretrainDataError(ValueError):
    """Bad pretraining input: the message names the file and what is wrong."""


def valid_pixels(data: np.ndarray, nodata: float | None) -> np.ndarray:
    """Bool (H, W) mask of the valid pixels of raw values ``data`` (C, H, W).

    A pixel is nodata when any band is NaN or all its bands equal ``nodata`` (0 when None:
    Sentinel-2 L1C's fill value).
    """
    fill = 0.0 if nodata is None else nodata
    return ~(np.isnan(data).any(axis=0) | (data == np.float32(fill)).all(axis=0))


def _coarse_shape(shape: tuple[int, int], max_px: int) -> tuple[int, int]:
    """The shape of a decimated read of a ``shape`` raster with at most ``max_px`` per side."""
    factor = max(1, -(-max(shape) // max_px))
    return -(-shape[0] // factor), -(-shape[1] // factor)


def parse_date(text: str) -> str | None:
    """The first ``YYYYMMDD`` or ``YYYY-MM-DD`` date in ``text`` as ``"YYYYMMDD"``, else None."""
    for pattern in _DATE_PATTERNS:
        m = pattern.search(text)
        if m and 1 <= int(m.group(2)) <= 12 and 1 <= int(m.group(3)) <= 31:
            return "".join(m.groups())
    return None


# ---------------------------------------------------------------------------------- sources
_MAX_OPEN_FILES = 64
_open_files: OrderedDict[Path, rasterio.io.DatasetReader] = OrderedDict()
_open_files_pid = os.getpid()


def _open_cached(path: Path) -> rasterio.io.DatasetReader:
    """An open rasterio dataset for ``path`` from a small per-process LRU cache.

    Archives have up to millions of files: keeping one handle per file would exhaust file
    descriptors, reopening on every read is slow. Forked workers start with an empty cache.
    """
    global _open_files_pid
    if os.getpid() != _open_files_pid:  # a forked worker: the parent's handles are not ours
        _open_files.clear()
        _open_files_pid = os.getpid()
    handle = _open_files.get(path)
    if handle is not None and not handle.closed:
        _open_files.move_to_end(path)
        return handle
    try:
        handle = rasterio.open(path)
    except rasterio.errors.RasterioIOError as exc:
        raise PretrainDataError(f"{path}: not a readable raster ({exc})") from exc
    _open_files[path] = handle
    while len(_open_files) > _MAX_OPEN_FILES:
        _, old_handle = _open_files.popitem(last=False)
        old_handle.close()
    return handle


class RasterSource:
    """One raster of one scene at one date, read by windows.

    Subclasses set ``name`` (for messages), ``scene``, ``date``, ``shape`` (H, W), ``bands``
    (names of the bands ``read`` returns, in order), ``nodata``, ``transform``, ``crs``.
    """

    name: str
    scene: str
    date: str | None
    shape: tuple[int, int]
    bands: tuple[str, ...]
    nodata: float | None = None
    transform: rasterio.Affine | None = None
    crs: rasterio.crs.CRS | None = None

    def read(self, window: Window) -> np.ndarray:
        """Raw values float32 (C, window.height, window.width)."""
        raise NotImplementedError

    def coarse(self, max_px: int = 128) -> np.ndarray:
        """The whole raster decimated (nearest) to at most ``max_px`` pixels per side.

        Used to find rasters without valid pixels before training. This fallback reads the
        raster whole; subclasses read decimated.
        """
        h, w = _coarse_shape(self.shape, max_px)
        full = self.read(Window(0, 0, self.shape[1], self.shape[0]))
        rows = np.linspace(0, self.shape[0] - 1, h).round().astype(int)
        cols = np.linspace(0, self.shape[1] - 1, w).round().astype(int)
        return full[:, rows][:, :, cols]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, scene={self.scene!r}, date={self.date})"


def _select_band_indexes(
    available: Sequence[str], wanted: Sequence[str] | None, where: str
) -> list[int]:
    """0-based positions of ``wanted`` bands among ``available`` (normalised names)."""
    if wanted is None:
        return list(range(len(available)))
    norm = [normalize_band_name(b) for b in available]
    idx = []
    for band in wanted:
        nb = normalize_band_name(band)
        if nb not in norm:
            raise PretrainDataError(
                f"{where}: band {band} not found (bands here: {', '.join(available)})"
            )
        idx.append(norm.index(nb))
    return idx


class GeoTiffSource(RasterSource):
    """A multi-band GeoTIFF (one scene, one date).

    Bands are matched by their descriptions (``B02``, ``B8A``, ...). A file without band
    descriptions is taken to hold ``default_bands`` (the band spec's) in order when its band
    count matches, else ``bands`` in order when its count matches theirs. ``nodata`` is used
    when the file declares no nodata value.
    """

    def __init__(
        self,
        path: str | Path,
        scene: str,
        date: str | None = None,
        bands: Sequence[str] | None = None,
        default_bands: Sequence[str] = SENTINEL2_L1C.bands,
        nodata: float | None = None,
    ) -> None:
        self.path = Path(path)
        self.name = str(self.path)
        self.scene, self.date = scene, date
        try:
            with rasterio.open(self.path) as src:
                descriptions = list(src.descriptions)
                count, self.shape = src.count, (src.height, src.width)
                self.transform, self.crs = src.transform, src.crs
                # The file's own declaration is the more specific one: --nodata fills the gap.
                self.nodata = src.nodata if src.nodata is not None else nodata
        except rasterio.errors.RasterioIOError as exc:
            raise PretrainDataError(f"{self.path}: not a readable raster ({exc})") from exc
        if all(descriptions):
            names = descriptions
        elif count == len(default_bands):
            names = list(default_bands)
        elif bands is not None and count == len(bands):
            names = list(bands)
        elif bands is None:
            names = [f"band{i + 1}" for i in range(count)]
        else:
            raise PretrainDataError(
                f"{self.path}: {count} bands without descriptions; cannot find bands "
                f"{', '.join(bands)} (name them in the file or pass bands matching its count)"
            )
        self._indexes = [i + 1 for i in _select_band_indexes(names, bands, str(self.path))]
        self.bands = tuple(names[i - 1] for i in self._indexes)

    def read(self, window: Window) -> np.ndarray:
        src = _open_cached(self.path)
        return src.read(self._indexes, window=window).astype(np.float32, copy=False)

    def coarse(self, max_px: int = 128) -> np.ndarray:
        h, w = _coarse_shape(self.shape, max_px)
        src = _open_cached(self.path)
        shape = (len(self._indexes), h, w)
        return src.read(self._indexes, out_shape=shape, resampling=Resampling.nearest).astype(
            np.float32, copy=False
        )


class BandFilesSource(RasterSource):
    """One acquisition stored as one single-band GeoTIFF per band (SSL4EO-S12, SeCo).

    The grid is that of the finest band (most pixels); coarser bands are resampled bilinearly
    onto it by windowed reads with a fractional source window (same footprint).

    ``band_shapes`` (one ``(h, w)`` per selected band) skips opening the files here: archives
    of fixed-size patches (SSL4EO-S12: 264/132/44 px) are listed without touching a million
    files; the sizes are checked when a file is first read.
    """

    def __init__(
        self,
        band_paths: dict[str, Path],
        scene: str,
        date: str | None,
        name: str,
        bands: Sequence[str] | None = None,
        nodata: float | None = None,
        band_shapes: list[tuple[int, int]] | None = None,
    ) -> None:
        self.name, self.scene, self.date = name, scene, date
        available = list(band_paths)
        idx = _select_band_indexes(available, bands, name)
        self.bands = tuple(normalize_band_name(available[i]) for i in idx)
        self._paths = [band_paths[available[i]] for i in idx]
        if band_shapes is None:
            band_shapes = []
            for p in self._paths:
                src = _open_cached(p)
                band_shapes.append((src.height, src.width))
                if src.nodata is not None:  # the files' declaration wins over --nodata
                    nodata = src.nodata
        self._shapes = list(band_shapes)
        self._ref = int(np.argmax([h * w for h, w in self._shapes]))
        self.shape = self._shapes[self._ref]
        self.nodata = nodata
        self._georef: tuple | None = None

    @property
    def transform(self) -> rasterio.Affine:  # type: ignore[override]
        return self._georeferencing()[0]

    @property
    def crs(self) -> rasterio.crs.CRS:  # type: ignore[override]
        return self._georeferencing()[1]

    def _georeferencing(self) -> tuple:
        if self._georef is None:
            src = _open_cached(self._paths[self._ref])
            self._georef = (src.transform, src.crs)
        return self._georef

    def read(self, window: Window) -> np.ndarray:
        h, w = int(window.height), int(window.width)
        out = np.empty((len(self._paths), h, w), np.float32)
        for i, (path, (bh, bw)) in enumerate(zip(self._paths, self._shapes, strict=True)):
            src = _open_cached(path)
            if (src.height, src.width) != (bh, bw):
                raise PretrainDataError(
                    f"{path}: {src.height} x {src.width} px, expected {bh} x {bw} like the "
                    "other acquisitions of this archive"
                )
            if (bh, bw) == self.shape:
                out[i] = src.read(1, window=window)
                continue
            fy, fx = bh / self.shape[0], bw / self.shape[1]
            src_win = Window(
                window.col_off * fx, window.row_off * fy, window.width * fx, window.height * fy
            )
            out[i] = src.read(1, window=src_win, out_shape=(h, w), resampling=Resampling.bilinear)
        return out

    def coarse(self, max_px: int = 128) -> np.ndarray:
        h, w = _coarse_shape(self.shape, max_px)
        out = np.empty((len(self._paths), h, w), np.float32)
        for i, path in enumerate(self._paths):
            out[i] = _open_cached(path).read(1, out_shape=(h, w), resampling=Resampling.nearest)
        return out


class OSCDSource(RasterSource):
    """One date of one OSCD city on its common 10 m grid (13 bands, see ``OSCDCity``)."""

    def __init__(self, city, date_index: int, bands: Sequence[str] | None = None) -> None:
        self.city = city
        self.date_index = date_index
        self.name = f"{city.city_dir}/imgs_{date_index}"
        self.scene = city.name
        self.date = city.dates[date_index - 1]
        self.shape = city.shape
        self.transform, self.crs = city.transform, city.crs
        self._band_idx = _select_band_indexes(city.bands, bands, self.name)
        self.bands = tuple(city.bands[i] for i in self._band_idx)
        self.nodata = 0.0  # Sentinel-2 L1C: DN 0 = no data

    def read(self, window: Window) -> np.ndarray:
        data = self.city.read(date=self.date_index, window=window)
        return data if len(self._band_idx) == data.shape[0] else data[self._band_idx]

    def coarse(self, max_px: int = 128) -> np.ndarray:
        # The 10 m B02 file alone, decimated: resampling all 13 band files of every city only
        # to look for nodata would cost more than it tells (OSCD has next to no fill).
        h, w = _coarse_shape(self.shape, max_px)
        path = self.city._band_paths[self.date_index]["B02"]
        with rasterio.open(path) as src:
            return src.read([1], out_shape=(1, h, w), resampling=Resampling.nearest).astype(
                np.float32
            )


# ---------------------------------------------------------------------------------- builders
def detect_format(path: str | Path) -> str:
    """Guess the layout of ``path``: manifest CSV, OSCD, SSL4EO/SeCo or a folder of GeoTIFFs."""
    path = Path(path)
    if path.is_file():
        if path.suffix.lower() == ".csv":
            return "manifest"
        raise PretrainDataError(f"{path}: a file must be a manifest .csv (path,scene_id[,date])")
    if not path.is_dir():
        raise PretrainDataError(f"{path}: no such file or folder")
    if (path / "Onera Satellite Change Detection dataset - Images").is_dir() or any(
        (d / "imgs_1").is_dir() for d in path.iterdir() if d.is_dir()
    ):
        return "oscd"
    if any(path.glob("*.tif")) or any(path.glob("*.tiff")):
        return "folder"
    root = _ssl4eo_root(path)
    for loc in sorted(p for p in root.iterdir() if p.is_dir())[:5]:
        for acq in sorted(p for p in loc.iterdir() if p.is_dir())[:1]:
            if list(acq.glob("B*.tif")):
                return "ssl4eo"
    if any(path.rglob("*.tif")):
        return "folder"
    raise PretrainDataError(
        f"{path}: cannot tell its layout (no OSCD cities, no GeoTIFFs, no "
        f"<location>/<date>/B*.tif); pass --format"
    )


def _ssl4eo_root(path: Path) -> Path:
    # SSL4EO-S12 ships s1/, s2a/ (L2A), s2c/ (L1C): the 13-band L1C set is the method's default.
    for sub in ("s2c", "s2a"):
        if (path / sub).is_dir():
            return path / sub
    return path


def sources_from_manifest(
    csv_path: str | Path,
    bands: Sequence[str] | None = None,
    nodata: float | None = None,
    default_bands: Sequence[str] = SENTINEL2_L1C.bands,
) -> list[RasterSource]:
    """Sources listed in a CSV with header ``path,scene_id[,date]``."""
    csv_path = Path(csv_path)
    sources: list[RasterSource] = []
    with csv_path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        fields = [f.strip() for f in (reader.fieldnames or [])]
        if "path" not in fields or "scene_id" not in fields:
            raise PretrainDataError(
                f"{csv_path}: manifest needs a header with columns path,scene_id[,date]; "
                f"found {fields}"
            )
        for line_no, row in enumerate(reader, start=2):
            row = {k.strip(): (v or "").strip() for k, v in row.items() if k}
            if not row.get("path"):
                raise PretrainDataError(f"{csv_path}:{line_no}: empty path")
            p = Path(row["path"])
            p = p if p.is_absolute() else csv_path.parent / p
            if not p.is_file():
                raise PretrainDataError(f"{csv_path}:{line_no}: raster {p} not found")
            scene = row.get("scene_id") or p.stem
            date = row.get("date") or parse_date(p.name)
            sources.append(
                GeoTiffSource(p, scene, date, bands, default_bands=default_bands, nodata=nodata)
            )
    if not sources:
        raise PretrainDataError(f"{csv_path}: the manifest lists no rasters")
    return sources


def sources_from_folder(
    folder: str | Path,
    bands: Sequence[str] | None = None,
    nodata: float | None = None,
    default_bands: Sequence[str] = SENTINEL2_L1C.bands,
) -> list[RasterSource]:
    """One scene per GeoTIFF found (recursively) under ``folder``."""
    folder = Path(folder)
    paths = sorted({*folder.rglob("*.tif"), *folder.rglob("*.tiff")})
    if not paths:
        raise PretrainDataError(f"{folder}: no .tif/.tiff files found")
    return [
        GeoTiffSource(
            p,
            str(p.relative_to(folder).with_suffix("")),
            parse_date(p.name),
            bands,
            default_bands=default_bands,
            nodata=nodata,
        )
        for p in paths
    ]


def sources_from_oscd(root: str | Path, bands: Sequence[str] | None = None) -> list[RasterSource]:
    """Both dates of every OSCD city (labelled or not), one scene per city."""
    from swimdiff_geo.data.oscd import OSCDCity, find_oscd_root, list_oscd_cities

    oscd_root = find_oscd_root(root)
    cities = list_oscd_cities(oscd_root)
    if not cities:
        raise PretrainDataError(f"{root}: no OSCD cities with imgs_1 and imgs_2 found")
    sources: list[RasterSource] = []
    for name in cities:
        city = OSCDCity(oscd_root, name)
        sources += [OSCDSource(city, 1, bands), OSCDSource(city, 2, bands)]
    return sources


def sources_from_ssl4eo(
    root: str | Path,
    bands: Sequence[str] | None = None,
    nodata: float | None = None,
    uniform_size: bool = True,
) -> list[RasterSource]:
    """SSL4EO-S12 / SeCo: ``<root>[/s2c]/<location>/<acquisition>/<band>.tif``.

    ``uniform_size``: all acquisitions have the band sizes of the first one (true for both
    datasets), so listing opens no other file; a file that differs is reported when read.
    """
    base = _ssl4eo_root(Path(root))
    sources: list[RasterSource] = []
    for loc in sorted(p for p in base.iterdir() if p.is_dir()):
        for acq in sorted(p for p in loc.iterdir() if p.is_dir()):
            band_paths = {
                normalize_band_name(f.stem): f
                for f in sorted(acq.glob("*.tif"))
                if re.fullmatch(r"[Bb]\d{1,2}[Aa]?", f.stem)
            }
            if not band_paths:
                continue
            # Keep the Sentinel-2 order (B01..B08, B8A, B09..B12) whatever the listing order.
            order = {b: i for i, b in enumerate(SENTINEL2_L1C.bands)}
            band_paths = dict(sorted(band_paths.items(), key=lambda kv: order.get(kv[0], 99)))
            source = BandFilesSource(
                band_paths,
                loc.name,
                parse_date(acq.name),
                str(acq),
                bands,
                # Files not opened here share the first acquisition's (declared) nodata.
                nodata=sources[0].nodata if sources and uniform_size else nodata,
                # Fixed-size patches: only the first acquisition's files are opened here.
                band_shapes=sources[0]._shapes if sources and uniform_size else None,
            )
            sources.append(source)
    if not sources:
        raise PretrainDataError(f"{base}: no <location>/<acquisition>/B*.tif band files found")
    return sources


def build_sources(
    path: str | Path,
    fmt: str = "auto",
    bands: Sequence[str] | None = None,
    nodata: float | None = None,
    default_bands: Sequence[str] = SENTINEL2_L1C.bands,
) -> list[RasterSource]:
    """All rasters of a pretraining archive in layout ``fmt`` (see :data:`FORMATS`).

    ``default_bands``: the band spec's bands, which a GeoTIFF without band descriptions is
    taken to hold when its band count matches. ``nodata`` applies to files that declare none.
    """
    if fmt not in FORMATS:
        raise PretrainDataError(f"unknown --format {fmt!r}; choose from {', '.join(FORMATS)}")
    if fmt == "auto":
        fmt = detect_format(path)
        logger.info("%s: detected format %s", path, fmt)
    if not Path(path).exists():
        raise PretrainDataError(f"{path}: no such file or folder")
    if fmt == "manifest":
        return sources_from_manifest(path, bands, nodata, default_bands)
    if fmt == "folder":
        return sources_from_folder(path, bands, nodata, default_bands)
    if fmt == "oscd":
        return sources_from_oscd(path, bands)
    return sources_from_ssl4eo(path, bands, nodata)


# ---------------------------------------------------------------------------------- dataset
class PretrainWindowDataset(Dataset):
    """Random square windows from a list of :class:`RasterSource`.

    Args:
        sources: the rasters; those smaller than ``window_size``, and those where no window
            can be more than ``1 - max_nodata_fraction`` valid (judged on a decimated read of
            each raster, see ``scan_limit``), are skipped with a warning naming them.
        window_size: side w (pixels) of the windows read.
        samples_per_epoch: dataset length; default = the number of non-overlapping windows in
            all sources (at least one per source).
        temporal: view2 from another date of the same scene (temporal positives).
        input_scale: multiplies raw values (Sentinel-2 L1C DN / 10000 by default).
        max_nodata_fraction: windows with more nodata pixels than this are redrawn.
        scene_grid: if > 0, split each raster into scenes of ``scene_grid`` x ``scene_grid``
            pixels (the scene of a window is the cell of its centre).
        seed: windows are a deterministic function of (seed, epoch, index), so every process
            and worker draws different, reproducible windows.
        max_tries: window draws per sample before giving up with an error.
        scan_limit: archives with more rasters than this are not scanned for nodata up front
            (SSL4EO-S12 has a million small, filtered patches: opening each would take hours).

    ``scene_names`` lists the scene of each integer ``scene_id`` (sorted names, or
    ``name/rRcC`` cells with ``scene_grid``).
    """

    def __init__(
        self,
        sources: Sequence[RasterSource],
        window_size: int = 64,
        samples_per_epoch: int | None = None,
        temporal: bool = False,
        input_scale: float = SENTINEL2_L1C.input_scale,
        max_nodata_fraction: float = 0.5,
        scene_grid: int = 0,
        seed: int = 0,
        max_tries: int = 20,
        scan_limit: int = 10_000,
    ) -> None:
        if window_size < 1:
            raise ValueError(f"window_size must be >= 1, got {window_size}")
        usable = []
        for s in sources:
            if s.shape[0] < window_size or s.shape[1] < window_size:
                logger.warning(
                    "%s: %s px is smaller than the %d px window; skipped",
                    s.name,
                    s.shape,
                    window_size,
                )
            else:
                usable.append(s)
        if not usable:
            names = ", ".join(f"{s.name} {s.shape}" for s in sources[:5])
            raise PretrainDataError(
                f"no raster is at least {window_size} x {window_size} px ({names}); "
                "use a smaller --crop-size/--window-size"
            )
        valid_share = np.ones(len(usable))
        if len(usable) <= scan_limit:
            usable, valid_share = self._drop_nodata_rasters(
                usable, window_size, max_nodata_fraction
            )
        band_sets = {s.bands for s in usable}
        if len(band_sets) > 1:
            raise PretrainDataError(
                "the rasters do not all provide the same bands: "
                + "; ".join(f"{s.name}: {','.join(s.bands)}" for s in usable[:4])
            )
        self.sources = list(usable)
        self.bands = usable[0].bands
        self.window_size = window_size
        self.temporal = temporal
        self.input_scale = input_scale
        self.max_nodata_fraction = max_nodata_fraction
        self.scene_grid = scene_grid
        self.seed = seed
        self.max_tries = max_tries
        self.epoch = 0

        # Source choice proportional to valid area, so every valid pixel is equally likely and
        # rasters that are mostly fill (Sentinel-2 edge tiles) do not waste window draws.
        areas = np.array([s.shape[0] * s.shape[1] for s in self.sources], dtype=np.float64)
        weights = areas * valid_share
        self._source_p = weights / weights.sum()
        n_windows = sum(
            max(1, (s.shape[0] // window_size) * (s.shape[1] // window_size)) for s in self.sources
        )
        self.samples_per_epoch = int(samples_per_epoch or n_windows)

        if scene_grid > 0:
            names = set()
            for s in self.sources:
                for r in range(0, s.shape[0], scene_grid):
                    for c in range(0, s.shape[1], scene_grid):
                        names.add(self._cell_name(s.scene, r, c))
            self.scene_names = sorted(names)
        else:
            self.scene_names = sorted({s.scene for s in self.sources})
        self._scene_index = {n: i for i, n in enumerate(self.scene_names)}

        by_scene: dict[str, list[int]] = defaultdict(list)
        for i, s in enumerate(self.sources):
            by_scene[s.scene].append(i)
        self._partners = {
            i: [j for j in by_scene[s.scene] if self.sources[j].date != s.date]
            for i, s in enumerate(self.sources)
        }
        if temporal and not any(self._partners.values()):
            logger.warning(
                "temporal views asked for, but no scene has two dates: "
                "falling back to two augmentations of one window"
            )

    @staticmethod
    def _drop_nodata_rasters(
        sources: list[RasterSource], window_size: int, max_nodata_fraction: float
    ) -> tuple[list[RasterSource], np.ndarray]:
        """The rasters that hold at least one acceptable window, and their valid shares.

        Each raster is read once, decimated to at most 128 px a side; a raster is dropped when
        no window-sized block of that read is valid enough. Without this, an all-fill raster
        is found only when 20 draws in a row happen to land on it, in the middle of training.
        """
        kept, shares, dropped = [], [], []
        need = 1.0 - max_nodata_fraction
        for s in sources:
            valid = valid_pixels(s.coarse(), s.nodata).astype(np.float64)
            h, w = valid.shape
            # The window's size on the decimated grid, and the best valid share of any block.
            k = max(1, min(h, w, round(window_size * max(h / s.shape[0], w / s.shape[1]))))
            c = np.pad(valid.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
            blocks = c[k:, k:] - c[:-k, k:] - c[k:, :-k] + c[:-k, :-k]
            best = float(blocks.max()) / (k * k)
            if valid.any() and best >= need:
                kept.append(s)
                shares.append(float(valid.mean()))
            else:
                dropped.append(s)
                fill = 0.0 if s.nodata is None else s.nodata
                why = (
                    f"every pixel is nodata ({fill:g})"
                    if not valid.any()
                    else f"no {window_size} px window is {need:.0%} valid"
                )
                logger.warning("%s: %s; skipped", s.name, why)
        if not kept:
            names = ", ".join(s.name for s in dropped[:5]) + (", ..." if len(dropped) > 5 else "")
            raise PretrainDataError(
                f"no raster has a {window_size} px window with at most "
                f"{max_nodata_fraction:.0%} nodata ({names}); check the rasters' nodata value "
                "(--nodata) or --max-nodata-fraction"
            )
        return kept, np.array(shares)

    def _cell_name(self, scene: str, row: int, col: int) -> str:
        g = self.scene_grid
        return f"{scene}/r{row // g}c{col // g}"

    def set_epoch(self, epoch: int) -> None:
        """Draw a new set of windows (called at the start of each epoch)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.samples_per_epoch

    def _nodata_fraction(self, data: np.ndarray, nodata: float | None) -> float:
        return 1.0 - float(valid_pixels(data, nodata).mean())

    def _partner_window(self, src: RasterSource, dst: RasterSource, win: Window) -> Window | None:
        """The window of ``dst`` covering the ground of ``win`` in ``src`` (None if impossible)."""
        if src.transform == dst.transform and src.shape == dst.shape:
            return win
        if src.transform is not None and src.transform == dst.transform:
            fits = (
                win.row_off + win.height <= dst.shape[0] and win.col_off + win.width <= dst.shape[1]
            )
            return win if fits else None
        if src.crs is None or dst.crs is None or src.crs != dst.crs or src.transform is None:
            return None
        b = window_bounds(win, src.transform)
        w2 = from_bounds(*b, transform=dst.transform)
        r0, c0 = int(round(w2.row_off)), int(round(w2.col_off))
        if r0 < 0 or c0 < 0 or r0 + win.height > dst.shape[0] or c0 + win.width > dst.shape[1]:
            return None
        return Window(c0, r0, win.width, win.height)

    def __getitem__(self, index: int | tuple[int, int]) -> dict:
        """The sample ``index`` of the current epoch, or of epoch ``e`` for a key ``(e, index)``.

        Keys that carry their epoch let a sampler in the main process choose windows without
        relying on ``set_epoch`` reaching loader workers.
        """
        epoch, index = index if isinstance(index, tuple) else (self.epoch, index)
        rng = np.random.default_rng([self.seed, int(epoch), int(index)])
        w = self.window_size
        tried: list[str] = []
        for _ in range(self.max_tries):
            si = int(rng.choice(len(self.sources), p=self._source_p))
            src = self.sources[si]
            r0 = int(rng.integers(0, src.shape[0] - w + 1))
            c0 = int(rng.integers(0, src.shape[1] - w + 1))
            win = Window(c0, r0, w, w)
            view1 = src.read(win)
            if self._nodata_fraction(view1, src.nodata) > self.max_nodata_fraction:
                tried.append(f"{src.name} rows {r0}:{r0 + w} cols {c0}:{c0 + w}")
                continue
            view2, date2 = view1, src.date
            if self.temporal and self._partners[si]:
                dj = self._partners[si][int(rng.integers(len(self._partners[si])))]
                dst = self.sources[dj]
                win2 = self._partner_window(src, dst, win)
                if win2 is not None:
                    cand = dst.read(win2)
                    if self._nodata_fraction(cand, dst.nodata) <= self.max_nodata_fraction:
                        view2, date2 = cand, dst.date
            scene = (
                self._cell_name(src.scene, r0 + w // 2, c0 + w // 2)
                if self.scene_grid > 0
                else src.scene
            )
            s = self.input_scale
            return {
                "view1": torch.from_numpy(np.nan_to_num(view1) * s),
                "view2": torch.from_numpy(np.nan_to_num(view2) * s),
                "scene_id": torch.tensor(self._scene_index[scene], dtype=torch.long),
                "date1": src.date or "",
                "date2": date2 or "",
                "source": si,
                "window": torch.tensor([r0, c0], dtype=torch.long),  # (row, col) of view1
                "valid": torch.from_numpy(valid_pixels(view1, src.nodata)),
            }
        raise PretrainDataError(
            f"{self.max_tries} windows in a row were more than {self.max_nodata_fraction:.0%} "
            f"nodata (last: {tried[-1]}); check the rasters' nodata or --max-nodata-fraction"
        )


def compute_band_stats(
    dataset: PretrainWindowDataset, num_samples: int = 64
) -> tuple[list[float], list[float]]:
    """Per-band mean and std (of scaled values) over the valid pixels of ``num_samples`` windows.

    Valid pixels: those that are not nodata by :func:`valid_pixels` with each raster's nodata.

    Uses the first windows of epoch 0, so every process computes the same numbers.
    """
    saved_epoch = dataset.epoch
    dataset.set_epoch(0)
    total = np.zeros(len(dataset.bands))
    total_sq = np.zeros(len(dataset.bands))
    count = 0
    try:
        for i in range(min(num_samples, len(dataset))):
            sample = dataset[i]
            x = sample["view1"].numpy().astype(np.float64)
            # The raster's own nodata rule (declared value, --nodata, NaN), not "all zero".
            px = x[:, sample["valid"].numpy()]
            total += px.sum(axis=1)
            total_sq += (px**2).sum(axis=1)
            count += px.shape[1]
    finally:
        dataset.set_epoch(saved_epoch)
    if count == 0:
        raise PretrainDataError("no valid pixels found to compute band statistics")
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean**2, 1e-12))
    return mean.tolist(), std.tolist()
