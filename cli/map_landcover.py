"""``swimdiff-geo map-landcover IMAGE -o OUTDIR``."""

from __future__ import annotations

import os

import click

from swimdiff_geo.inference.landcover import LandcoverOptions, LandcoverOutputs
from swimdiff_geo.inference.landcover import map_landcover as run

from .options import ProgressBar, echo_log, engine_options, handle_errors, output_dir_option


@click.command("map-landcover")
@click.argument("image", type=click.Path())
@output_dir_option(
    help="Folder for landcover.tif, class_areas.csv, summary.json (+ optional outputs)."
)
@click.option(
    "--polygons",
    is_flag=True,
    help="Also write landcover.gpkg: one polygon per connected same-class region "
    "(regions under --min-area merged into their neighbours first).",
)
@click.option(
    "--probabilities",
    is_flag=True,
    help="Also write class_probabilities.tif (float32, one band per class).",
)
@click.option(
    "--stride",
    type=click.IntRange(min=1),
    default=None,
    help="Classification models only: cell size in pixels of the class map "
    "(default: half the tile size).",
)
@engine_options
@handle_errors
def map_landcover(
    image: str,
    out_dir: str,
    polygons: bool,
    probabilities: bool,
    stride: int | None,
    model: str | None,
    tile_size: int | None,
    overlap: float | None,
    batch_size: int,
    min_area: float,
    bands: list[int] | None,
    extent: tuple[float, float, float, float] | None,
    extent_crs: str,
    mask_clouds: bool,
    device: str,
    threads: int,
    overwrite: bool,
    quiet: bool,
) -> None:
    """Map land cover in IMAGE with a segmentation or patch-classification model.

    IMAGE is a raster file, a Sentinel-2 product as downloaded (SAFE folder or ZIP) or a folder
    of band files (docs/inputs.md)."""
    options = LandcoverOptions(
        model=model, stride=stride, tile_size=tile_size, overlap=overlap, batch_size=batch_size,
        min_area=min_area, bands=bands, extent=extent, extent_crs=extent_crs,
        mask_clouds=mask_clouds, device=device, threads=threads, overwrite=overwrite,
    )  # fmt: skip
    with ProgressBar("map-landcover", quiet) as bar:
        outputs = LandcoverOutputs.in_dir(out_dir, polygons=polygons, probabilities=probabilities)
        summary = run(image, outputs, options, progress=bar, log=echo_log(quiet, bar))
    if not quiet:
        for row in summary["classes"]:
            area = f"{row['area_ha']:,.2f} ha" if row["area_ha"] is not None else ""
            click.echo(
                f"{row['class_id']:>3} {row['class_name']:<24} {row['percent_of_valid_area']:6.2f}%"
                f"  {area}"
            )
        click.echo(f"outputs: {os.path.abspath(out_dir)}")
