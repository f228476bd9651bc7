"""The change-detection job: two dates in, probability, mask, polygons and a summary out."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from .engine import (
    DateInput,
    StackedReader,
    cropped_consumer,
    run_sliding_window,
)
from .errors import InputError
from .inputs import (
    align_pair,
    cirrus_difference_warning,
    extent_window,
    input_warnings,
    open_input,
    select_bands,
)
from .io import RasterSpec, Window
from .jobs import (
    AreaCounter,
    Cancelled,
    EngineOptions,
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
from .qml import (
    CHANGE_MASK_QML,
    CHANGE_POLYGONS_QML,
    CHANGE_PROBABILITY_QML,
    embed_default_style,
    sidecar_path,
)
from .tiling import window_on_tile_lattice

PROBABILITY_NODATA = -1.0
MASK_NODATA = 255


@dataclass
class ChangeOutputs:
    """Where the change job writes; None skips an output (probability and mask are required)."""

    probability: str
    mask: str
    polygons: str | None = None
    summary: str | None = None
    styles: bool = True  # QGIS default styles next to the rasters (<name>.qml)
    stale: tuple[str, ...] = ()  # skipped outputs of this layout: see OutputTransaction

    @classmethod
    def in_dir(cls, out_dir: str, polygons: bool = True) -> ChangeOutputs:
        """The CLI's layout: ``OUTDIR/change_probability.tif`` etc."""
        gpkg = os.path.join(out_dir, "change_polygons.gpkg")
        return cls(
            probability=os.path.join(out_dir, "change_probability.tif"),
            mask=os.path.join(out_dir, "change_mask.tif"),
            polygons=gpkg if polygons else None,
            summary=os.path.join(out_dir, "summary.json"),
            stale=() if polygons else (gpkg,),
        )

    def paths(self) -> list[str]:
        paths = [p for p in (self.probability, self.mask, self.polygons, self.summary) if p]
        return paths + [path for path, _ in self.style_paths()]

    def style_paths(self) -> list[tuple[str, str]]:
        """(QML sidecar path, its text) of the rasters that get one; two rasters named alike
        (x.tif, x.tiff) give one path twice, which the output transaction refuses."""
        if not self.styles:
            return []
        return [
            (sidecar_path(self.probability), CHANGE_PROBABILITY_QML),
            (sidecar_path(self.mask), CHANGE_MASK_QML),
        ]


@dataclass
class ChangeOptions(EngineOptions):
    """:class:`EngineOptions` plus the decision threshold (None = the model's)."""

    threshold: float | None = None


def detect_change(
    image_a: str,
    image_b: str,
    outputs: ChangeOutputs,
    options: ChangeOptions | None = None,
    backend: Any = None,
    progress: Progress | None = None,
    is_cancelled: Cancelled | None = None,
    log: Log | None = None,
    check_only: bool = False,
) -> dict[str, Any]:
    """Detect change from ``image_a`` (earlier) to ``image_b`` (later); returns the summary.

    Outputs are on A's grid (cut to the intersection with B); B is warped onto it if needed.
    Nodata in either date is nodata in every output. Everything is written under temporary
    names and renamed at the end; on error or cancellation nothing is left behind.

    ``check_only``: stop once the inputs are open, matched to the model's bands and aligned,
    and return :func:`~.jobs.checked_summary` (what ``batch --dry-run`` reports); raises as
    the run would for inputs it cannot use.
    """
    options = options or ChangeOptions()
    ctx = start_job("change_detection", options, backend, progress, is_cancelled, log)
    contract = ctx.model.contract
    threshold = contract.threshold if options.threshold is None else options.threshold
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must lie in [0, 1], got {threshold}")
    sources = []
    try:
        a = open_input(ctx.backend, image_a, ctx.log, options.mask_clouds)
        sources.append(a)
        b = open_input(ctx.backend, image_b, ctx.log, options.mask_clouds)
        sources.append(b)
        bands_a = select_bands(a, contract, options.bands)
        bands_b = select_bands(b, contract, options.bands)
        date_warnings = [
            w
            for s, bands in ((a, bands_a), (b, bands_b))
            for w in input_warnings(s, bands, contract)
        ]
        for warning in date_warnings:
            ctx.log(warning)
        # a date in other units (or with an offset) differs in B10 for that reason, not cirrus
        warning = (
            None if date_warnings else cirrus_difference_warning(a, bands_a, b, bands_b, contract)
        )
        if warning:
            ctx.log(warning)
        grid, a, a_offset, b_on_grid = align_pair(ctx.backend, a, b, ctx.log)
        if b_on_grid is not b:
            sources.append(b_on_grid)
        b_offset = (0, 0)
        run_grid, inner = grid, None  # the model runs over the extent and context around it
        if options.extent is not None:
            window = extent_window(ctx.backend, grid, options.extent, options.extent_crs, image_a)
            run_window, inner = window_on_tile_lattice(
                window, grid.width, grid.height, ctx.tile_size, ctx.overlap_px
            )
            run_grid, grid = grid.subgrid(run_window), grid.subgrid(window)
            a_offset = (a_offset[0] + run_window.col_off, a_offset[1] + run_window.row_off)
            b_offset = (run_window.col_off, run_window.row_off)
            ctx.log(f"info: mapping the extent: {grid.width}x{grid.height} px")
        if check_only:
            return checked_summary(ctx, grid)
        reader = StackedReader(
            [DateInput(a, bands_a, a_offset), DateInput(b_on_grid, bands_b, b_offset)], contract
        )
        crs = crs_info_of(ctx.backend, grid)
        paths = outputs.paths()
        with OutputTransaction(paths, options.overwrite, outputs.stale, [image_a, image_b]) as tx:
            probability = RasterOutput(
                ctx,
                tx,
                outputs.probability,
                RasterSpec(
                    grid,
                    1,
                    "float32",
                    PROBABILITY_NODATA,
                    ["change probability"],
                    tags={"model": os.path.basename(ctx.model.path)},
                ),
            )
            mask = RasterOutput(
                ctx,
                tx,
                outputs.mask,
                RasterSpec(
                    grid,
                    1,
                    "uint8",
                    MASK_NODATA,
                    ["change mask"],
                    color_table={0: (0, 0, 0, 0), 1: (230, 30, 30, 255)},
                    category_names=["no change", "change"],
                    tags={"threshold": str(threshold)},
                    overview_resampling="nearest",
                ),
            )
            counter = AreaCounter(grid, crs, 2)

            def consume(window: Window, pred: np.ndarray, valid: np.ndarray) -> None:
                prob = pred[0]
                prob[~valid] = PROBABILITY_NODATA
                changed = prob >= threshold
                mask_values = np.where(valid, changed, MASK_NODATA).astype(np.uint8)
                probability.write(prob[None], window)
                mask.write(mask_values[None], window)
                counter.add(changed.astype(np.int64), window, valid)

            windows_run = run_sliding_window(
                ctx.model,
                reader,
                run_grid,
                ctx.tile_size,
                ctx.overlap_px,
                options.batch_size,
                consume if inner is None else cropped_consumer(consume, inner),
                out_channels=1,
                progress=ctx.progress,
                is_cancelled=ctx.is_cancelled,
                read_ahead=options.read_ahead,
            )
            valid_pixels = int(counter.pixels.sum())
            if valid_pixels == 0:
                raise InputError(
                    image_a,
                    f"no valid pixels: this date and {image_b} are nodata everywhere they overlap",
                )
            n_polygons = None
            if outputs.polygons or options.min_area > 0:
                if options.min_area > 0:
                    counter = AreaCounter(grid, crs, 2)  # recounted without the small regions

                def without_small_regions(window: Window, keys: np.ndarray) -> None:
                    # --min-area: changes under it are "no change" in the mask and the areas too
                    valid = mask.sink.read(window) != MASK_NODATA
                    changed = keys > 0
                    mask.write(np.where(valid, changed, MASK_NODATA).astype(np.uint8)[None], window)
                    counter.add(changed.astype(np.int64), window, valid)

                layer, n_regions = regions_layer(
                    ctx, tx, lambda w: mask.sink.read(w) == 1, grid, crs, options.min_area,
                    layer_name="change_polygons", mean_of=lambda w: probability.sink.read(w),
                    final_keys=without_small_regions if options.min_area > 0 else None,
                    polygons=bool(outputs.polygons),
                )  # fmt: skip
                if layer is not None:
                    ctx.backend.write_polygons(tx.temp(outputs.polygons), layer)
                    if outputs.styles:
                        embed_default_style(
                            tx.temp(outputs.polygons), "change_polygons", CHANGE_POLYGONS_QML
                        )
                    n_polygons = n_regions
            probability.finish()
            mask.finish()
            summary = _summary(
                ctx, image_a, image_b, grid, threshold, options, counter, windows_run, n_polygons
            )
            if outputs.summary:
                write_json(tx.temp(outputs.summary), summary)
            for path, text in outputs.style_paths():
                write_text(tx.temp(path), text)
            tx.commit()
        return summary
    finally:
        for src in reversed(sources):
            src.close()


def _summary(ctx, image_a, image_b, grid, threshold, options, counter, windows_run, n_polygons):
    valid = int(counter.pixels.sum())
    changed = int(counter.pixels[1])
    summary: dict[str, Any] = {
        "inputs": {"image_a": input_path(image_a), "image_b": input_path(image_b)},
        "model": model_summary(ctx.model),
        "threshold": threshold,
        "min_area_m2": options.min_area,
        **extent_summary(options),
        "pixels": {
            "total": grid.width * grid.height,
            "valid": valid,
            "nodata": grid.width * grid.height - valid,
            "changed": changed,
        },
        "changed_percent_of_valid": 100.0 * changed / valid,
        "changed_area_m2": None,
        "changed_area_ha": None,
        "valid_area_m2": None,
        "polygons": n_polygons,
    }
    if counter.area_m2 is not None:
        summary["changed_area_m2"] = float(counter.area_m2[1])
        summary["changed_area_ha"] = float(counter.area_m2[1]) / 1e4
        summary["valid_area_m2"] = float(counter.area_m2.sum())
    summary["engine"] = engine_summary(ctx, grid, windows_run)
    summary.update(ctx.log_summary())
    summary["runtime_s"] = round(time.perf_counter() - ctx.started, 3)
    return summary
