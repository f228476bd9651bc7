"""``stack``: a Sentinel-2 product or a folder of band files as one multi-band GeoTIFF.

The GeoTIFF holds what the engine reads from the product (docs/inputs.md): every band on the
grid of the finest band file (the 20 m and 60 m bands resampled bilinearly), the radiometric
offset of processing baseline 04.00 and later removed, the bands named in their descriptions,
nodata where the product has none (and, with ``mask_clouds``, under its cloud mask). So a
stack made here runs through ``detect-change``, any GIS and any other tool as the product does,
which a stack made by hand from a new product's band files does not (it keeps the +1000).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..bands import normalize_band_name
from .band_files import find_band_files, folder_of_band_file, product_of_band_file
from .defaults import default_backend
from .errors import CancelledError, InputError, OutputError
from .inputs import extent_window, open_input, sample_pixels
from .io import RasterBackend, RasterSink, RasterSource, RasterSpec, Window, is_gdal_name
from .jobs import Cancelled, Log, Progress, input_path, log_summary, write_json, write_text
from .outputs import OutputTransaction
from .qml import rgb_qml, sidecar_path

BLOCK = 1024  # px: a 13-band float32 block is 54 MB, whatever the size of the product
UINT16_NODATA = 0  # Sentinel-2's NODATA digital number
TRUE_COLOUR = ("B04", "B03", "B02")  # red, green, blue


@dataclass
class StackOptions:
    """``bands``: band names to keep, in the order given (``["B04", "B03", "B02"]``; None:
    every band the input has, Sentinel-2 order). ``extent`` ``(left, bottom, right, top)`` in
    ``extent_crs`` cuts the stack to the pixels whose centres lie inside. ``mask_clouds``:
    pixels the product's cloud mask flags are nodata. ``summary``: also write the run's facts
    as JSON to this path."""

    bands: Sequence[str] | None = None
    extent: tuple[float, float, float, float] | None = None
    extent_crs: str = "EPSG:4326"
    mask_clouds: bool = False
    overwrite: bool = False
    summary: str | None = None


def _chosen_bands(source: RasterSource, wanted: Sequence[str] | None) -> list[str]:
    have = list(source.band_descriptions)
    if not wanted:
        return have
    names = [normalize_band_name(b) for b in wanted]
    missing = [w for w, n in zip(wanted, names, strict=True) if n not in have]
    if missing:
        raise InputError(
            source.path,
            f"has no band {', '.join(missing)}; its bands: {', '.join(have)}",
        )
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"--bands names {', '.join(twice)} twice")
    return names


def true_colour_style(
    source: RasterSource, names: Sequence[str], indices: Sequence[int]
) -> str | None:
    """A QGIS style showing B04 / B03 / B02 as red / green / blue, each stretched from its 2nd
    to its 98th percentile (of a sample of ``source``'s valid pixels), when the stack holds all
    three; else None."""
    if not all(b in names for b in TRUE_COLOUR):
        return None
    pixels = sample_pixels(source, [indices[names.index(b)] for b in TRUE_COLOUR])
    if pixels.shape[1] < 100:
        return None
    low, high = np.percentile(pixels, [2, 98], axis=1)
    return rgb_qml(
        tuple(names.index(b) + 1 for b in TRUE_COLOUR),
        [(float(a), float(max(b, a + 1))) for a, b in zip(low, high, strict=True)],
    )


def _copy_blocks(
    source: RasterSource,
    indices: Sequence[int],
    offset: Window,
    sink: RasterSink,
    spec: RasterSpec,
    progress: Progress | None,
    is_cancelled: Cancelled | None,
) -> int:
    """Copy bands ``indices`` of ``source`` from ``offset`` on into ``sink`` block by block,
    invalid pixels as ``spec.nodata``; uint16 (digital numbers) rounded, and valid values
    below 1 raised to 1. Returns how many were raised."""
    grid = spec.grid
    blocks = [
        Window(c, r, min(BLOCK, grid.width - c), min(BLOCK, grid.height - r))
        for r in range(0, grid.height, BLOCK)
        for c in range(0, grid.width, BLOCK)
    ]
    raised = 0
    for k, block in enumerate(blocks):
        if is_cancelled is not None and is_cancelled():
            raise CancelledError("cancelled by the user; nothing written")
        at = Window(block.col_off + offset.col_off, block.row_off + offset.row_off,
                    block.width, block.height)  # fmt: skip
        data, valid = source.read(at, indices)
        if spec.dtype == "uint16":
            values = np.rint(data)
            raised += int(np.count_nonzero((values < 1) & valid))
            data = np.where(valid, np.clip(values, 1, 65535), spec.nodata)
        else:
            data = np.where(valid, data, spec.nodata)
        sink.write(data.astype(spec.dtype), block)
        if progress is not None:
            progress((k + 1) / len(blocks))
    return raised


def stack_bands(
    path: str,
    out: str,
    options: StackOptions | None = None,
    backend: RasterBackend | None = None,
    progress: Progress | None = None,
    is_cancelled: Cancelled | None = None,
    log: Log | None = None,
) -> dict[str, Any]:
    """Write the product or band folder ``path`` as the Cloud-Optimized GeoTIFF ``out``; a
    band file of a product (``IMG_DATA/..._B04.jp2``) stands for its product.

    Digital numbers stay digital numbers: a product's bands are written as uint16 with the
    offset removed (a valid pixel that would fall below 1 is written as 1, so that it stays
    apart from nodata 0) and bilinear values rounded to whole numbers; a folder of band files
    without offsets keeps its data type. ``out`` appears complete or not at all. Returns the
    run's summary (bands, size, data type, offsets removed, pixels raised to 1).
    """
    options = options or StackOptions()
    backend = backend or default_backend()
    started = time.perf_counter()
    messages: list[str] = []

    def say(message: str) -> None:
        messages.append(message)
        if log is not None:
            log(message)

    if not out.lower().endswith((".tif", ".tiff")):
        raise OutputError(
            f"{out}: the stack is written as a Cloud-Optimized GeoTIFF; give a path ending in .tif"
        )
    files = find_band_files(path)
    if files is None:  # a band file (a layer QGIS opened from one) stands for its product/folder
        product = product_of_band_file(path)
        whole = product or folder_of_band_file(path)
        if whole is not None:
            what = "the product" if product else "every band file of the folder"
            say(f"info: {path} is one band file of {whole}: stacking {what}")
            path, files = whole, find_band_files(whole)
    if files is None and not (is_gdal_name(path) or os.path.exists(path)):
        raise InputError(path, "does not exist")
    if files is None:
        raise InputError(
            path,
            "is one raster, not a Sentinel-2 product (SAFE folder, its ZIP, a granule, one of "
            "its band files) or a folder of band files (or one of them): there is nothing to "
            "stack",
        )
    source = open_input(backend, path, say, options.mask_clouds, files)
    try:
        names = _chosen_bands(source, options.bands)
        indices = [source.band_descriptions.index(n) + 1 for n in names]
        grid, offset = source.grid, Window(0, 0, source.grid.width, source.grid.height)
        if options.extent is not None:
            offset = extent_window(backend, grid, options.extent, options.extent_crs, path)
            grid = grid.subgrid(offset)
            say(f"info: stacking the extent: {grid.width}x{grid.height} px")
        offsets = {n: files.offsets.get(n, 0.0) for n in names if files.offsets.get(n, 0.0)}
        # Sentinel-2 digital numbers (uint16, or float32 only because an offset is added)
        # stay uint16 digital numbers; a folder of other band files keeps its type.
        as_dn = bool(offsets) or source.dtype == "uint16"
        dtype = "uint16" if as_dn else source.dtype
        nodata: float = UINT16_NODATA if as_dn else source.nodata
        if nodata is None:
            nodata = float("nan") if np.dtype(dtype).kind == "f" else 0
        tags = {"source": os.path.basename(os.path.normpath(path)), "kind": files.kind}
        if files.processing_baseline:
            tags["processing_baseline"] = files.processing_baseline
        if offsets:
            tags["radiometric_offsets_added"] = json.dumps(offsets)
        spec = RasterSpec(grid, len(names), dtype, nodata, names, tags=tags)
        style = true_colour_style(source, names, indices)
        paths = (
            [out]
            + ([sidecar_path(out)] if style else [])
            + ([options.summary] if options.summary else [])
        )
        # an earlier stack's true-colour style would misname the bands of one without them
        stale = [] if style else [sidecar_path(out)]
        with OutputTransaction(paths, options.overwrite, stale, [path]) as tx:
            scratch = tx.scratch(os.path.basename(out) + ".tiled.tif")
            sink = backend.create(scratch, spec)
            try:
                raised = _copy_blocks(source, indices, offset, sink, spec, progress, is_cancelled)
            finally:
                sink.close()
            backend.to_cog(scratch, tx.temp(out), spec)
            os.remove(scratch)
            if raised:
                say(
                    f"info: {raised:,} valid pixel values fell below 1 with the offset removed "
                    "(darker than the offset) and were written as 1, so that 0 stays nodata"
                )
            summary = {
                "input": input_path(path),
                "output": os.path.abspath(out),
                "kind": files.kind,
                "processing_baseline": files.processing_baseline,
                "bands": names,
                "band_files": {n: files.files[n] for n in names},
                "radiometric_offsets_added": offsets,
                "cloud_mask_applied": bool(options.mask_clouds and files.cloud_mask),
                "dtype": dtype,
                "nodata": nodata,
                "width": grid.width,
                "height": grid.height,
                "crs": backend.crs_name(grid.crs_wkt),
                "pixels_raised_to_1": raised,
                "style": os.path.abspath(sidecar_path(out)) if style else None,
                **log_summary(messages),
                "runtime_s": round(time.perf_counter() - started, 2),
            }
            if options.summary:
                write_json(tx.temp(options.summary), summary)
            if style:  # QGIS opens the stack in true colour
                write_text(tx.temp(sidecar_path(out)), style)
            tx.commit()
        return summary
    finally:
        source.close()
