"""``swimdiff-geo stack PRODUCT OUT.tif``: a Sentinel-2 product as one multi-band GeoTIFF."""

from __future__ import annotations

import os

import click

from swimdiff_geo.inference.stack import StackOptions, stack_bands

from .options import (
    ProgressBar,
    echo_log,
    extent_crs_option,
    extent_option,
    handle_errors,
    mask_clouds_option,
    overwrite_option,
    parse_band_names,
    quiet_option,
)


@click.command("stack")
@click.argument("product", type=click.Path(exists=True))
@click.argument("out", type=click.Path(dir_okay=False))
@click.option(
    "--bands",
    callback=parse_band_names,
    default=None,
    metavar="NAME,...",
    help="Band names to keep, in this order, e.g. B04,B03,B02.  [default: every band of the "
    "product, B01 ... B12]",
)
@extent_option
@extent_crs_option
@mask_clouds_option
@click.option(
    "--summary",
    type=click.Path(dir_okay=False),
    default=None,
    help="Also write what was done (bands, offsets removed, size) as JSON to this file.",
)
@overwrite_option
@quiet_option
@handle_errors
def stack(
    product: str,
    out: str,
    bands: list[str] | None,
    extent: tuple[float, float, float, float] | None,
    extent_crs: str,
    mask_clouds: bool,
    summary: str | None,
    overwrite: bool,
    quiet: bool,
) -> None:
    """Write PRODUCT's bands as one Cloud-Optimized GeoTIFF OUT, as the engine reads them.

    PRODUCT is a Sentinel-2 product as downloaded (SAFE folder or ZIP, one granule, or one of
    its band files) or a folder of band files (..._B01.tif, ..._B8A.jp2, or one of them). Every
    band lands on the grid of the finest band file (20 m and 60 m bands resampled bilinearly),
    named in its band description; the +1000 offset of processing baseline 04.00 and later is
    removed, so the digital numbers are those of older products and of the models' training
    data (docs/inputs.md). Nodata is 0. With B04, B03 and B02 in the stack, OUT's .qml beside it
    makes QGIS open it in true colour.
    """
    options = StackOptions(
        bands=bands,
        extent=extent,
        extent_crs=extent_crs,
        mask_clouds=mask_clouds,
        overwrite=overwrite,
        summary=summary,
    )
    with ProgressBar("stack", quiet) as bar:
        facts = stack_bands(product, out, options, progress=bar, log=echo_log(quiet, bar))
    if not quiet:
        click.echo(
            f"{len(facts['bands'])} bands ({', '.join(facts['bands'])}), "
            f"{facts['width']}x{facts['height']} px, {facts['dtype']}, {facts['crs']}; "
            f"{facts['runtime_s']:.1f} s"
        )
        click.echo(f"output: {os.path.abspath(out)}")
