"""The land-cover job: one image in, a class map, class areas, polygons and probabilities out.

Segmentation models (output ``(N, K, H, W)``) run through the sliding-window engine: blended
class probabilities, then argmax. Classification models (output ``(N, K)``) are patch
classifiers: they run on a grid of cells ``stride`` pixels wide, each cell classified from the
``tile_size`` window centred on it (shifted inside the raster at the edges), so the class map
has pixels ``stride`` times larger than the image's, over the same georeferenced extent.
"""

from __future__ import annotations

import csv
import math
import os
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from .engine import (
    DateInput,
    StackedReader,
    _read_ahead,
    cropped_consumer,
    run_sliding_window,
)
from .errors import CancelledError, InputError
from .inputs import (
    extent_window,
    input_warnings,
    open_input,
    select_bands,
)
from .io import Grid, RasterSpec, Window
from .jobs import (
    AreaCounter,
    Cancelled,
    EngineOptions,
    JobContext,
    Log,
    Progress,
    RasterOutput,
    checked_summary,
    crs_info_of,
    engine_summary,
    extent_summary,
    input_path,
    model_summary,
    regions_layer,
    start_job,
    write_json,
    write_text,
)
from .outputs import OutputTransaction
from .qml import embed_default_style, landcover_polygons_qml, landcover_qml, sidecar_path
from .tiling import pad_to_tile, window_on_tile_lattice

CLASS_NODATA = 255
PROBABILITY_NODATA = -1.0


@dataclass
class LandcoverOutputs:
    """Where the land-cover job writes; None skips an optional output."""

    landcover: str
    areas_csv: str | None = None
    polygons: str | None = None
    probabilities: str | None = None
    summary: str | None = None
    styles: bool = True  # a QGIS default style next to the class map (<name>.qml)
    stale: tuple[str, ...] = ()  # skipped outputs of this layout: see OutputTransaction

    @classmethod
    def in_dir(
        cls, out_dir: str, polygons: bool = False, probabilities: bool = False
    ) -> LandcoverOutputs:
        """The CLI's layout: ``OUTDIR/landcover.tif``, ``class_areas.csv``, ..."""
        gpkg = os.path.join(out_dir, "landcover.gpkg")
        probability_tif = os.path.join(out_dir, "class_probabilities.tif")
        return cls(
            landcover=os.path.join(out_dir, "landcover.tif"),
            areas_csv=os.path.join(out_dir, "class_areas.csv"),
            polygons=gpkg if polygons else None,
            probabilities=probability_tif if probabilities else None,
            summary=os.path.join(out_dir, "summary.json"),
            stale=tuple(
                p for p, kept in ((gpkg, polygons), (probability_tif, probabilities)) if not kept
            ),
        )

    def paths(self) -> list[str]:
        files = (self.landcover, self.areas_csv, self.polygons, self.probabilities, self.summary)
        sidecars = [sidecar_path(self.landcover)] if self.styles else []
        if self.areas_csv:
            sidecars.append(csv_types_path(self.areas_csv))
        return [p for p in files if p] + sidecars


def csv_types_path(csv_path: str) -> str:
    """The ``.csvt`` beside a CSV file: its column types, which QGIS and GDAL read, so that the
    class areas open as numbers (sortable), not text."""
    return os.path.splitext(csv_path)[0] + ".csvt"


@dataclass
class LandcoverOptions(EngineOptions):
    """:class:`EngineOptions` plus ``stride`` (pixels) for patch-classification models
    (None = half the tile size)."""

    stride: int | None = None


def _hex_to_rgba(color: str) -> tuple[int, int, int, int]:
    c = color.lstrip("#")
    return int(c[0:2], 16), int(c[2:4], 16), int(c[4:6], 16), 255


def map_landcover(
    image: str,
    outputs: LandcoverOutputs,
    options: LandcoverOptions | None = None,
    backend: Any = None,
    progress: Progress | None = None,
    is_cancelled: Cancelled | None = None,
    log: Log | None = None,
    check_only: bool = False,
) -> dict[str, Any]:
    """Map land cover in ``image``; returns the summary (also written to ``outputs.summary``).

    ``check_only``: stop once the image is open and matched to the model's bands, and return
    :func:`~.jobs.checked_summary` (what ``batch --dry-run`` reports).
    """
    options = options or LandcoverOptions()
    ctx = start_job(
        ("segmentation", "classification"), options, backend, progress, is_cancelled, log
    )
    contract = ctx.model.contract
    class_ids = contract.class_ids()
    if max(class_ids) >= CLASS_NODATA or min(class_ids) < 0:
        raise InputError(ctx.model.path, "class ids must lie in 0..254 for a uint8 class map")
    source = open_input(ctx.backend, image, ctx.log, options.mask_clouds)
    try:
        bands = select_bands(source, contract, options.bands)
        for warning in input_warnings(source, bands, contract):
            ctx.log(warning)
        if options.stride is not None and contract.model_type == "segmentation":
            ctx.log(
                f"warning: --stride {options.stride} ignored: it spaces a patch classifier's "
                f"cells, and {os.path.basename(ctx.model.path)} is a segmentation model, which "
                "maps every pixel"
            )
        image_grid, offset = source.grid, (0, 0)
        run_grid, inner = image_grid, None  # segmentation: the extent and context around it
        if options.extent is not None:
            window = extent_window(
                ctx.backend, image_grid, options.extent, options.extent_crs, image
            )
            if contract.model_type == "segmentation":
                run_window, inner = window_on_tile_lattice(
                    window, image_grid.width, image_grid.height, ctx.tile_size, ctx.overlap_px
                )
            else:  # a patch classifier's cells start at the extent's corner
                run_window = window
            run_grid, image_grid = image_grid.subgrid(run_window), image_grid.subgrid(window)
            offset = (run_window.col_off, run_window.row_off)
            ctx.log(f"info: mapping the extent: {image_grid.width}x{image_grid.height} px")
        if contract.model_type == "classification":
            stride = options.stride or max(1, ctx.tile_size // 2)
            grid = _strided_grid(image_grid, stride)
        else:
            stride = 1
            grid = image_grid
        if check_only:
            return checked_summary(ctx, grid)
        reader = StackedReader([DateInput(source, bands, offset)], contract)
        crs = crs_info_of(ctx.backend, grid)
        names = [contract.class_names.get(str(i), "") for i in range(max(class_ids) + 1)]
        colors = {
            i: _hex_to_rgba(contract.class_colors[str(i)])
            for i in class_ids
            if str(i) in contract.class_colors
        }
        with OutputTransaction(outputs.paths(), options.overwrite, outputs.stale, [image]) as tx:
            classes = RasterOutput(
                ctx, tx, outputs.landcover,
                RasterSpec(grid, 1, "uint8", CLASS_NODATA, ["land cover class"],
                           color_table=colors or None, category_names=names,
                           tags={"model": os.path.basename(ctx.model.path)},
                           overview_resampling="nearest"),
            )  # fmt: skip
            probs = None
            if outputs.probabilities:
                probs = RasterOutput(
                    ctx, tx, outputs.probabilities,
                    RasterSpec(grid, len(class_ids), "float32", PROBABILITY_NODATA,
                               [f"p({contract.class_names[str(i)]})" for i in class_ids]),
                )  # fmt: skip
            counter = AreaCounter(grid, crs, max(class_ids) + 1)
            id_lookup = np.asarray(class_ids, dtype=np.uint8)

            def consume(window: Window, pred: np.ndarray, valid: np.ndarray) -> None:
                ids = id_lookup[np.argmax(pred, axis=0)]
                classes.write(np.where(valid, ids, CLASS_NODATA).astype(np.uint8)[None], window)
                if probs is not None:
                    probs.write(np.where(valid[None], pred, PROBABILITY_NODATA), window)
                counter.add(ids.astype(np.int64), window, valid)

            if contract.model_type == "segmentation":
                windows_run = run_sliding_window(
                    ctx.model, reader, run_grid, ctx.tile_size, ctx.overlap_px,
                    options.batch_size,
                    consume if inner is None else cropped_consumer(consume, inner),
                    out_channels=len(class_ids), progress=ctx.progress,
                    is_cancelled=ctx.is_cancelled, read_ahead=options.read_ahead,
                )  # fmt: skip
            else:
                windows_run = _run_patch_classifier(
                    ctx,
                    reader,
                    image_grid,
                    grid,
                    stride,
                    options.batch_size,
                    len(class_ids),
                    consume,
                )
            valid_pixels = int(counter.pixels.sum())
            if valid_pixels == 0:
                raise InputError(image, "no valid pixels: the image is nodata everywhere")
            n_polygons = None
            if outputs.polygons or options.min_area > 0:
                # The minimum mapping unit: regions under --min-area join their neighbour in the
                # class map, so the map, the class areas and the polygons agree (no holes).
                if options.min_area > 0:
                    counter = AreaCounter(grid, crs, max(class_ids) + 1)  # recounted
                layer, n_regions = _class_regions(
                    classes, grid, crs, options, names, ctx, tx, counter, bool(outputs.polygons)
                )
                if layer is not None:
                    ctx.backend.write_polygons(tx.temp(outputs.polygons), layer)
                    if outputs.styles:
                        style = landcover_polygons_qml(contract.class_names, contract.class_colors)
                        embed_default_style(tx.temp(outputs.polygons), "landcover", style)
                    n_polygons = n_regions
            classes.finish()
            if probs is not None:
                probs.finish()
            table = _class_table(counter, class_ids, contract.class_names)
            if outputs.areas_csv:
                _write_areas_csv(
                    tx.temp(outputs.areas_csv), tx.temp(csv_types_path(outputs.areas_csv)), table
                )
            summary = {
                "inputs": {"image": input_path(image)},
                "model": model_summary(ctx.model),
                "stride_px": stride,
                "pixels": {"total": grid.width * grid.height, "valid": valid_pixels},
                "classes": table,
                "valid_area_m2": float(counter.area_m2.sum()) if counter.area_m2 is not None
                else None,
                "min_area_m2": options.min_area,
                **extent_summary(options),
                "polygons": n_polygons,
                "engine": engine_summary(ctx, grid, windows_run),
                **ctx.log_summary(),
                "runtime_s": round(time.perf_counter() - ctx.started, 3),
            }  # fmt: skip
            if outputs.summary:
                write_json(tx.temp(outputs.summary), summary)
            if outputs.styles:
                qml = landcover_qml(contract.class_names, contract.class_colors)
                write_text(tx.temp(sidecar_path(outputs.landcover)), qml)
            tx.commit()
        return summary
    finally:
        source.close()


def _strided_grid(grid: Grid, stride: int) -> Grid:
    x0, dx, rx, y0, ry, dy = grid.transform
    return Grid(
        math.ceil(grid.width / stride),
        math.ceil(grid.height / stride),
        (x0, dx * stride, rx * stride, y0, ry * stride, dy * stride),
        grid.crs_wkt,
    )


def _run_patch_classifier(
    ctx: JobContext,
    reader: StackedReader,
    image_grid: Grid,
    grid: Grid,
    stride: int,
    batch_size: int,
    n_classes: int,
    consume,
) -> int:
    """Classify one ``tile_size`` window per output cell and hand each cell row to ``consume``."""
    tile = ctx.tile_size
    win_h, win_w = min(tile, image_grid.height), min(tile, image_grid.width)

    def centred(center: int, size: int, length: int) -> int:
        return int(min(max(center - size // 2, 0), length - size))

    def rows():
        for r in range(grid.height):
            cells = []
            for c in range(grid.width):
                cy = centred(r * stride + stride // 2, win_h, image_grid.height)
                cx = centred(c * stride + stride // 2, win_w, image_grid.width)
                data, valid = reader.read(Window(cx, cy, win_w, win_h))
                cell = valid[
                    r * stride - cy : (r + 1) * stride - cy, c * stride - cx : (c + 1) * stride - cx
                ]
                cells.append((pad_to_tile(data, tile), cell.size > 0 and cell.mean() > 0.5))
            yield r, cells

    n_run = 0
    for r, cells in _read_ahead(rows(), depth=2, stop=threading.Event()):
        if ctx.is_cancelled is not None and ctx.is_cancelled():
            raise CancelledError("cancelled by the user; partial outputs removed")
        valid = np.array([ok for _, ok in cells], dtype=bool)
        pred = np.zeros((n_classes, 1, grid.width), np.float32)
        todo = np.flatnonzero(valid)
        for start in range(0, len(todo), batch_size):
            idx = todo[start : start + batch_size]
            out = ctx.model.run(np.stack([cells[i][0] for i in idx]))
            if out.ndim != 2 or out.shape[1] != n_classes:
                raise InputError(
                    ctx.model.path, f"model returned shape {out.shape}; expected (N, {n_classes})"
                )
            pred[:, 0, idx] = out.T
            n_run += len(idx)
        consume(Window(0, r, grid.width, 1), pred, valid[None])
        if ctx.progress is not None:
            ctx.progress((r + 1) / grid.height)
    return n_run


def _class_regions(classes, grid, crs, options, names, ctx, tx, counter, polygons):
    """8-connected same-class regions, those under ``options.min_area`` merged into their
    neighbour: with a minimum area, rewrites the class map in place and recounts it into
    ``counter``; returns the polygon layer (None without ``polygons``) and its number of
    regions."""

    def class_keys(window: Window) -> np.ndarray:
        # class id + 1 as the region key: 0 is background (nodata), and classes never merge
        ids = classes.sink.read(window).astype(np.int64)
        return np.where(ids == CLASS_NODATA, 0, ids + 1)

    def rewrite(window: Window, keys: np.ndarray) -> None:
        ids = np.where(keys == 0, CLASS_NODATA, keys - 1)
        classes.write(ids.astype(np.uint8)[None], window)
        counter.add(ids, window, keys > 0)

    def class_fields(keys: np.ndarray) -> dict[str, tuple[np.ndarray, str]]:
        return {"class_id": (keys - 1, "int")}

    layer, n = regions_layer(
        ctx, tx, class_keys, grid, crs, options.min_area, layer_name="landcover",
        key_fields=class_fields, small_regions="merge",
        final_keys=rewrite if options.min_area > 0 else None, polygons=polygons,
    )  # fmt: skip
    if layer is None:
        return None, n
    ids = layer.attributes["class_id"]
    class_names = [names[i] if 0 <= i < len(names) else "" for i in ids]
    layer.attributes["class_name"] = np.array(class_names)
    layer.field_types["class_name"] = "str"
    return layer, n


def _class_table(counter: AreaCounter, class_ids: list[int], class_names: dict[str, str]):
    valid_pixels = int(counter.pixels.sum())
    valid_area = float(counter.area_m2.sum()) if counter.area_m2 is not None else None
    table = []
    for cid in class_ids:
        px = int(counter.pixels[cid])
        area = float(counter.area_m2[cid]) if counter.area_m2 is not None else None
        share = (area / valid_area if valid_area else px / valid_pixels) * 100.0
        table.append(
            {
                "class_id": cid,
                "class_name": class_names[str(cid)],
                "pixels": px,
                "area_m2": area,
                "area_ha": area / 1e4 if area is not None else None,
                "percent_of_valid_area": share,
            }
        )
    return table


def _write_areas_csv(path: str, types_path: str, table: list[dict[str, Any]]) -> None:
    """The class table as CSV, and its column types as the .csvt GDAL and QGIS read (areas
    are None, an empty cell, when the image is not georeferenced)."""
    kinds = {int: "Integer", str: "String"}
    types = [kinds.get(type(value), "Real") for value in table[0].values()]
    write_text(types_path, ",".join(f'"{t}"' for t in types) + "\n")
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(table[0]))
        writer.writeheader()
        for row in table:
            writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
