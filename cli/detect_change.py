"""``swimdiff-geo detect-change A B -o OUTDIR``."""

from __future__ import annotations

import os

import click

from swimdiff_geo.inference.change import ChangeOptions, ChangeOutputs
from swimdiff_geo.inference.change import detect_change as run

from .options import ProgressBar, echo_log, engine_options, handle_errors, output_dir_option


@click.command("detect-change")
@click.argument("image_a", type=click.Path())
@click.argument("image_b", type=click.Path())
@output_dir_option(
    help="Folder for change_probability.tif, change_mask.tif, change_polygons.gpkg, summary.json."
)
@click.option(
    "--threshold",
    "-t",
    type=click.FloatRange(0, 1),
    default=None,
    help="Change probability at or above which a pixel is changed. Default: the model's.",
)
@click.option(
    "--polygons/--no-polygons", default=True, show_default=True, help="Write change_polygons.gpkg."
)
@engine_options
@handle_errors
def detect_change(
    image_a: str,
    image_b: str,
    out_dir: str,
    threshold: float | None,
    polygons: bool,
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
    """Map change from IMAGE_A (earlier) to IMAGE_B (later).

    Each image is a raster file, a Sentinel-2 product as downloaded (SAFE folder or ZIP) or a
    folder of band files (docs/inputs.md).

    B is warped onto A's grid when their CRS, transform or size differ; outputs cover the
    intersection of their footprints. Nodata in either date is nodata in every output.
    """
    options = ChangeOptions(
        model=model,
        threshold=threshold,
        tile_size=tile_size,
        overlap=overlap,
        batch_size=batch_size,
        min_area=min_area,
        bands=bands,
        extent=extent,
        extent_crs=extent_crs,
        mask_clouds=mask_clouds,
        device=device,
        threads=threads,
        overwrite=overwrite,
    )
    with ProgressBar("detect-change", quiet) as bar:
        summary = run(
            image_a,
            image_b,
            ChangeOutputs.in_dir(out_dir, polygons=polygons),
            options,
            progress=bar,
            log=echo_log(quiet, bar),
        )
    if not quiet:
        area = summary["changed_area_ha"]
        area_text = f"{area:,.2f} ha, " if area is not None else ""
        click.echo(
            f"changed: {area_text}{summary['changed_percent_of_valid']:.2f}% of the valid area "
            f"({summary['pixels']['changed']:,} px); {summary['runtime_s']:.1f} s"
        )
        click.echo(f"outputs: {os.path.abspath(out_dir)}")
