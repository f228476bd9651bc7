"""``swimdiff-geo info PATH``: a model's metadata, or a raster's facts and fit to a model."""

from __future__ import annotations

import json
import os

import click

from swimdiff_geo.inference.band_files import BandStackSource, find_band_files, open_band_stack
from swimdiff_geo.inference.contract import load_model
from swimdiff_geo.inference.defaults import bundled_models, resolve_model_path
from swimdiff_geo.inference.io import RasterBackend, RasterSource, is_gdal_name

from .options import handle_errors, parse_bands


def _is_onnx(path: str) -> bool:
    if os.path.isdir(path) or is_gdal_name(path):  # /vsizip/..., GPKG:x.gpkg:t are rasters
        return False
    if path.lower().endswith(".onnx"):
        return True
    with open(path, "rb") as fh:  # ONNX is protobuf: field 1 (ir_version) varint first
        return fh.read(1) == b"\x08"


def model_info(path: str) -> dict:
    return load_model(path, device="cpu").describe()


def band_files_info(backend: RasterBackend, stack: BandStackSource) -> dict:
    """What ``info`` says about a Sentinel-2 product or a folder of band files, opened."""
    files, grid = stack.files, stack.grid
    return {
        "path": files.path,
        "product": files.kind,
        "processing_baseline": files.processing_baseline,
        "band_files": files.files,
        "radiometric_offsets": files.offsets,
        "cloud_mask": files.cloud_mask,
        **({"warning": files.warning} if files.warning else {}),
        "nodata": files.nodata,
        "width": grid.width,
        "height": grid.height,
        "count": stack.count,
        "grid_of_band": stack.grid_band,
        "crs": backend.crs_name(grid.crs_wkt),
        "georeferenced": grid.georeferenced,
        "resolution": list(grid.pixel_size),
        "bounds": list(grid.bounds),
    }


def fit_to_model(source: RasterSource, model_path: str, bands: list[int] | None) -> dict:
    """Whether ``source`` feeds the model: the bands it would use and the warnings it would get,
    or why not."""
    from swimdiff_geo.inference.errors import InputError
    from swimdiff_geo.inference.inputs import (
        new_baseline_warning,
        select_bands,
        value_scale_warning,
    )

    model = load_model(model_path, device="cpu")
    try:
        chosen = select_bands(source, model.contract, bands)
        fit = {
            "model": model_path,
            "fits": True,
            "bands_used": dict(zip(model.contract.bands, chosen, strict=True)),
        }
        warning = value_scale_warning(source, chosen, model.contract)
        if warning:  # fits, but probably in the wrong units
            fit["units_warning"] = warning.removeprefix("warning: ")
        warning = new_baseline_warning(source, chosen, model.contract)
        if warning:  # fits, but a new product stacked without removing its offset
            fit["baseline_warning"] = warning.removeprefix("warning: ")
        return fit
    except InputError as exc:  # unfit, or its pixels cannot be read
        return {"model": model_path, "fits": False, "why": exc.problem}


def raster_info(path: str, model_path: str | None, bands: list[int] | None) -> dict:
    from swimdiff_geo.inference.defaults import default_backend

    backend = default_backend()
    files = find_band_files(path)
    if files is None:
        facts = backend.describe(path)
        source = backend.open(path) if model_path else None
    else:  # a product or band folder: opened once, for its facts and for the fit
        source = open_band_stack(backend, files)
        facts = band_files_info(backend, source)
    try:
        if model_path:
            facts["fits_model"] = fit_to_model(source, model_path, bands)
    finally:
        if source is not None:
            source.close()
    return facts


def _print_readable(facts: dict, indent: int = 0) -> None:
    pad = "  " * indent
    for key, value in facts.items():
        if isinstance(value, dict) and value:
            click.echo(f"{pad}{key}:")
            _print_readable(value, indent + 1)
        else:
            click.echo(f"{pad}{key}: {json.dumps(value) if not isinstance(value, str) else value}")


def _existing_file_or_bundled_model(
    ctx: click.Context, param: click.Parameter, value: str | None
) -> str | None:
    if value is None:
        return None
    path = resolve_model_path(value)
    if not os.path.isfile(path):
        raise click.BadParameter(
            f"{value!r} is neither a file nor a bundled model ({', '.join(bundled_models())})"
        )
    return path


def _existing_path_or_bundled_model(
    ctx: click.Context, param: click.Parameter, value: str | None
) -> str | None:
    if value is not None and (os.path.isdir(value) or is_gdal_name(value)):
        return value  # a Sentinel-2 product or band folder, or a dataset name GDAL opens
    return _existing_file_or_bundled_model(ctx, param, value)


@click.command("info")
@click.argument("path", callback=_existing_path_or_bundled_model)
@click.option(
    "--model",
    "-m",
    default=None,
    callback=_existing_file_or_bundled_model,
    help="For a raster: check that it fits this model (band count / names, and whether its "
    "values look like the model's training data). A file or a bundled model's name.",
)
@click.option(
    "--bands",
    default=None,
    help="For --model: explicit band numbers, e.g. 2,3,4,8.",
    callback=parse_bands,
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of readable text.")
@handle_errors
def info(path: str, model: str | None, bands: list[int] | None, as_json: bool) -> None:
    """Describe PATH: an ONNX model's metadata (a file or a bundled model's name), or a raster's
    size, bands, CRS, resolution and nodata (and, with --model, whether it fits that model).

    PATH may also be a Sentinel-2 product (SAFE folder, its ZIP) or a folder of band files:
    then the band files found, the processing baseline and the radiometric offsets applied."""
    facts = model_info(path) if _is_onnx(path) else raster_info(path, model, bands)
    if as_json:
        click.echo(json.dumps(facts, indent=2))
    else:
        _print_readable(facts)
    fit = facts.get("fits_model")
    if fit is not None and not fit["fits"]:
        raise SystemExit(1)
