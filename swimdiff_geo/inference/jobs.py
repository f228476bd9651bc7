"""What the change and land-cover jobs share: options, raster outputs, areas, summaries."""

from __future__ import annotations

import functools
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from .. import __version__
from .areas import row_pixel_areas_m2
from .contract import LoadedModel, load_model
from .defaults import default_backend, model_path
from .io import (
    CrsInfo,
    Grid,
    PolygonLayer,
    RasterBackend,
    RasterSink,
    RasterSpec,
    Window,
    is_gdal_name,
)
from .outputs import OutputTransaction
from .regions import label_scene_regions
from .tiling import overlap_pixels

Progress = Callable[[float], None]
Cancelled = Callable[[], bool]
Log = Callable[[str], None]


@dataclass
class EngineOptions:
    """Options every job takes. ``None`` means "what the model metadata says".

    ``overlap`` is a percentage of the tile; ``min_area`` is in m^2; ``bands`` are 1-based
    raster band indices for one date, in the model's band order; ``threads`` = 0 lets
    onnxruntime choose. ``extent`` ``(left, bottom, right, top)`` in ``extent_crs`` (any CRS
    the backend parses: ``EPSG:32633``, WKT; default longitude/latitude) restricts the job to
    the pixels of the input grid whose centres lie inside it; None maps the whole input.
    ``mask_clouds``: pixels a Sentinel-2 product's cloud mask flags (opaque clouds, cirrus)
    are nodata (docs/inputs.md).
    """

    model: str | None = None
    tile_size: int | None = None
    overlap: float | None = None
    batch_size: int = 4
    min_area: float = 0.0
    bands: list[int] | None = None
    device: str = "auto"
    threads: int = 0
    overwrite: bool = False
    read_ahead: bool = True
    extent: tuple[float, float, float, float] | None = None
    extent_crs: str = "EPSG:4326"
    mask_clouds: bool = False


@dataclass
class JobContext:
    """Resolved model, backend and callbacks of one job run."""

    model: LoadedModel
    backend: RasterBackend
    tile_size: int
    overlap_px: int
    log: Log
    progress: Progress | None
    is_cancelled: Cancelled | None
    messages: list[str] = field(default_factory=list)  # everything logged, "info: ..." too
    started: float = field(default_factory=time.perf_counter)

    def log_summary(self) -> dict[str, list[str]]:
        """``warnings`` and ``messages`` of a job's summary: see :func:`log_summary`."""
        return log_summary(self.messages)


def input_path(path: str) -> str:
    """An input as a summary names it: absolute; a GDAL dataset name (``/vsizip//abs/a.zip/x``,
    ``GPKG:/abs/x.gpkg:table``) as given, which ``os.path.abspath`` would break."""
    return path if is_gdal_name(path) else os.path.abspath(path)


def log_summary(messages: Sequence[str]) -> dict[str, list[str]]:
    """A summary's ``warnings`` (the ``"warning: ..."`` lines; what a script or the batch report
    checks) and ``messages`` (every line logged, ``"info: ..."`` too, in order)."""
    return {
        "warnings": [m for m in messages if m.startswith("warning:")],
        "messages": list(messages),
    }


def start_job(
    model_type: str | tuple[str, ...],
    options: EngineOptions,
    backend: RasterBackend | None,
    progress: Progress | None,
    is_cancelled: Cancelled | None,
    log: Log | None,
) -> JobContext:
    """Load the model (the bundled default when none is given) and resolve tiling options."""
    started = time.perf_counter()
    kinds = (model_type,) if isinstance(model_type, str) else model_type
    path = model_path(options.model, kinds[0])
    model = cached_model(path, options.device, options.threads, kinds)
    tile = options.tile_size or model.contract.tile_size
    if tile < 8:
        raise ValueError(f"tile size must be >= 8 pixels, got {tile}")
    overlap_pct = model.contract.tiles_overlap if options.overlap is None else options.overlap
    messages: list[str] = []

    def logger(msg: str) -> None:
        messages.append(msg)
        if log is not None:
            log(msg)

    return JobContext(
        model=model,
        backend=backend or default_backend(),
        tile_size=tile,
        overlap_px=overlap_pixels(tile, overlap_pct),
        log=logger,
        progress=progress,
        is_cancelled=is_cancelled,
        messages=messages,
        started=started,
    )


def cached_model(path: str, device: str, threads: int, kinds: tuple[str, ...]) -> LoadedModel:
    """:func:`load_model`, reusing the session of an earlier job in this process when the file
    is unchanged (same size and mtime): a batch of hundreds of scenes, or repeated QGIS runs,
    then load a model once. onnxruntime sessions are safe to run from several threads."""
    try:
        stat = os.stat(path)
        stamp = (stat.st_size, stat.st_mtime_ns)
    except OSError:
        stamp = None  # load_model reports the missing file
    if stamp is None:
        return load_model(path, device, threads, expected_type=kinds)
    return _load_model_cached(os.path.abspath(path), stamp, device, threads, kinds)


@functools.lru_cache(maxsize=4)
def _load_model_cached(
    path: str, stamp: tuple[int, int], device: str, threads: int, kinds: tuple[str, ...]
) -> LoadedModel:
    return load_model(path, device, threads, expected_type=kinds)


class AreaCounter:
    """Accumulates pixel counts and areas (m^2) per value over streamed strips."""

    def __init__(self, grid: Grid, crs: CrsInfo | None, n_values: int) -> None:
        self.grid, self.crs = grid, crs
        self.pixels = np.zeros(n_values, np.int64)
        self.area_m2 = np.zeros(n_values, np.float64) if crs is not None else None

    def row_areas(self, window: Window) -> np.ndarray | None:
        if self.crs is None:
            return None
        return row_pixel_areas_m2(self.grid, self.crs, window.row_off, window.height)

    def add(self, values: np.ndarray, window: Window, valid: np.ndarray) -> None:
        """Count ``values`` (int, ``(rows, cols)``) where ``valid``."""
        n = len(self.pixels)
        vals = np.where(valid, values, n).astype(np.int64)
        self.pixels += np.bincount(vals.ravel(), minlength=n + 1)[:n]
        areas = self.row_areas(window)
        if areas is not None:
            weights = np.broadcast_to(areas[:, None], vals.shape).ravel()
            self.area_m2 += np.bincount(vals.ravel(), weights=weights, minlength=n + 1)[:n]


def crs_info_of(backend: RasterBackend, grid: Grid) -> CrsInfo | None:
    return backend.crs_info(grid.crs_wkt) if grid.crs_wkt else None


class RasterOutput:
    """One output raster: written tiled to a scratch file, finished as a COG at ``final``."""

    def __init__(self, ctx: JobContext, tx: OutputTransaction, final: str, spec: RasterSpec):
        self.ctx, self.tx, self.final, self.spec = ctx, tx, final, spec
        self.scratch = tx.scratch(os.path.basename(final) + ".tiled.tif")
        self.sink: RasterSink = ctx.backend.create(self.scratch, spec)

    def write(self, data: np.ndarray, window: Window) -> None:
        self.sink.write(data, window)

    def finish(self) -> None:
        self.sink.close()
        self.ctx.backend.to_cog(self.scratch, self.tx.temp(self.final), self.spec)
        os.remove(self.scratch)


def regions_layer(
    ctx: JobContext,
    tx: OutputTransaction,
    read_keys: Callable[[Window], np.ndarray],
    grid: Grid,
    crs: CrsInfo | None,
    min_area_m2: float,
    layer_name: str,
    mean_of: Callable[[Window], np.ndarray] | None = None,
    key_fields: Callable[[np.ndarray], dict[str, tuple[np.ndarray, str]]] | None = None,
    small_regions: Literal["drop", "merge"] = "drop",
    final_keys: Callable[[Window, np.ndarray], None] | None = None,
    polygons: bool = True,
) -> tuple[PolygonLayer | None, int]:
    """8-connected regions of equal key at least ``min_area_m2``, with areas and mean values.

    ``read_keys(strip_window)`` gives the keys (0 = background; see
    :func:`~swimdiff_geo.inference.regions.label_scene_regions`, also for ``small_regions``
    and ``final_keys``); ``mean_of(strip_window)`` the per-pixel value to average per region
    (the change probability); ``key_fields(keys)`` turns the regions' keys into attribute
    columns (e.g. the class id), placed after ``region_id``. The labels go to scratch rasters
    of ``tx`` strip by strip, so memory does not grow with the scene's height. Returns the layer
    (None with ``polygons=False``: only ``final_keys`` is wanted) and its number of regions.
    """
    if crs is None and min_area_m2 > 0:
        ctx.log("warning: --min-area ignored: the inputs are not georeferenced (no areas)")
    spec = RasterSpec(grid, 1, "int32", 0)
    provisional_path = tx.scratch(f"{layer_name}.provisional.tif")
    labels_path = tx.scratch(f"{layer_name}.labels.tif")
    provisional = ctx.backend.create(provisional_path, spec)
    try:
        labels = ctx.backend.create(labels_path, spec) if polygons else None
        try:
            regions = label_scene_regions(
                read_keys, grid, crs, min_area_m2, provisional, labels, values_of=mean_of,
                small_regions=small_regions, final_keys=final_keys,
            )  # fmt: skip
        finally:
            if labels is not None:
                labels.close()
    finally:
        provisional.close()
        os.remove(provisional_path)
    n = regions.count
    if not polygons:
        return None, n
    attributes: dict[str, np.ndarray] = {"region_id": np.arange(n + 1, dtype=np.int64)}
    types = {"region_id": "int"}
    for name, (values, kind) in (key_fields(regions.key) if key_fields else {}).items():
        attributes[name] = values
        types[name] = kind
    attributes["pixels"] = regions.pixels
    types["pixels"] = "int"
    no_areas = np.full(n + 1, np.nan)  # pixel space
    attributes["area_m2"] = regions.area_m2 if regions.area_m2 is not None else no_areas
    types["area_m2"] = "float"
    if regions.value_sum is not None:
        attributes["mean_probability"] = regions.value_sum / np.maximum(regions.pixels, 1)
        types["mean_probability"] = "float"
    return PolygonLayer(labels_path, grid, attributes, types, layer_name), n


def write_json(path: str, payload: dict[str, Any]) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(payload, fh, indent=2, default=_json_default)
        fh.write("\n")


def write_text(path: str, text: str) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(text)


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(type(value).__name__)


def model_summary(model: LoadedModel) -> dict[str, Any]:
    c = model.contract
    return {
        "path": os.path.abspath(model.path),
        "name": c.name,
        "model_type": c.model_type,
        "bands": c.bands,
        "providers": model.providers,
    }


def extent_summary(options: EngineOptions) -> dict[str, Any]:
    """``{"extent": {"bounds", "crs"}}`` for a job restricted to an extent, else nothing."""
    if options.extent is None:
        return {}
    return {"extent": {"bounds": [float(v) for v in options.extent], "crs": options.extent_crs}}


def checked_summary(ctx: JobContext, grid: Grid) -> dict[str, Any]:
    """What a job run with ``check_only`` returns: its inputs open, fit the model and align;
    the output grid it would write and the warnings it would give. Nothing was written."""
    return {
        "checked_only": True,
        "model": model_summary(ctx.model),
        "grid": {"width": grid.width, "height": grid.height},
        **ctx.log_summary(),
    }


def engine_summary(ctx: JobContext, grid: Grid, windows_run: int) -> dict[str, Any]:
    return {
        "software": f"swimdiff-geo {__version__}",
        "backend": ctx.backend.name,
        "tile_size": ctx.tile_size,
        "overlap_px": ctx.overlap_px,
        "windows_run": windows_run,
        "grid": {
            "width": grid.width,
            "height": grid.height,
            "crs": ctx.backend.crs_name(grid.crs_wkt),
            "transform": list(grid.transform),
        },
    }
