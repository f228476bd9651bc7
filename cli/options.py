"""Options shared by the inference commands, and the error handling they share."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import Any

import click

from swimdiff_geo.inference.errors import SwimdiffError


def _parsed_by(name: str) -> Callable[[click.Context, click.Parameter, str | None], Any]:
    """A click callback reading an option with ``swimdiff_geo.inference.inputs.<name>`` (the
    parser the QGIS plugin and batch manifests use too, imported when an option is given):
    None stays None, its ValueError becomes a usage error (exit 2)."""

    def callback(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
        if value is None:
            return None
        from swimdiff_geo.inference import inputs

        try:
            return getattr(inputs, name)(value)
        except ValueError as exc:
            raise click.BadParameter(str(exc)) from None

    return callback


parse_bands = _parsed_by("parse_band_numbers")  # --bands 2,3,4,8 -> [2, 3, 4, 8] (1-based)
parse_band_names = _parsed_by("parse_band_names")  # --bands B04,B03,B02 -> names (stack)
parse_extent_option = _parsed_by("parse_extent")  # --extent LEFT,BOTTOM,RIGHT,TOP -> 4 floats


def parse_crs_option(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """``--extent-crs``: a CRS GDAL knows (usage error, exit 2, otherwise)."""
    from rasterio.crs import CRS
    from rasterio.errors import CRSError

    try:
        CRS.from_user_input(value)
    except CRSError as exc:
        raise click.BadParameter(f"{value!r} is not a CRS GDAL knows ({exc})") from None
    return value


# -o names a folder; a name like these is a file meant as an output, which it cannot be
_FILE_SUFFIXES = (".tif", ".tiff", ".gpkg", ".json", ".csv", ".png", ".jpg", ".shp")


def _output_folder(ctx: click.Context, param: click.Parameter, value: str) -> str:
    if value.lower().endswith(_FILE_SUFFIXES) and not os.path.isdir(value):
        raise click.BadParameter(
            f"{value!r} looks like a file name; -o is the folder the outputs are written into "
            "(with their own names, e.g. change_probability.tif): give a folder, e.g. -o out/"
        )
    return value


def output_dir_option(help: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``--output/-o OUTDIR`` (required), the folder a command writes its outputs into."""
    return click.option(
        "--output",
        "-o",
        "out_dir",
        type=click.Path(file_okay=False),
        required=True,
        callback=_output_folder,
        help=help,
    )


model_option = click.option(
    "--model",
    "-m",
    type=click.Path(dir_okay=False),
    default=None,
    help="ONNX model file (docs/model-format.md) or the name of a bundled model "
    "(docs/models.md; `swimdiff-geo info NAME` describes one).  [default: the model bundled "
    "for this task]",
)
tile_size_option = click.option(
    "--tile-size",
    type=click.IntRange(min=8),
    default=None,
    help="Window size in pixels. Default: the model's tile_size.",
)
overlap_option = click.option(
    "--overlap",
    type=click.FloatRange(0, 100, max_open=True),
    default=None,
    help="Overlap of neighbouring windows, percent of the tile. "
    "Default: the model's tiles_overlap.",
)
batch_size_option = click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=4,
    show_default=True,
    help="Windows per onnxruntime call.",
)
min_area_option = click.option(
    "--min-area",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    help="Minimum mapping unit in m^2. detect-change: smaller changed regions become no change "
    "(mask, changed area, polygons; the probability keeps them). map-landcover: smaller regions "
    "join the neighbouring class they share the longest edge with (class map, class areas, "
    "polygons).",
)
bands_option = click.option(
    "--bands",
    callback=parse_bands,
    default=None,
    metavar="I,J,...",
    help="Raster band numbers (1-based) in the model's band order. Default: by band "
    "descriptions, else all bands in order.",
)
extent_option = click.option(
    "--extent",
    callback=parse_extent_option,
    default=None,
    metavar="LEFT,BOTTOM,RIGHT,TOP",
    help="Map only this area (the input pixels whose centres lie inside it), in --extent-crs. "
    "Default: the whole input.",
)
extent_crs_option = click.option(
    "--extent-crs",
    default="EPSG:4326",
    callback=parse_crs_option,
    show_default=True,
    help="CRS of --extent: EPSG:4326 is longitude/latitude; or e.g. EPSG:32633, or a WKT.",
)
mask_clouds_option = click.option(
    "--mask-clouds",
    is_flag=True,
    help="Sentinel-2 products: pixels their cloud mask flags (opaque clouds, cirrus; "
    "processing baseline 04.00 and later) become nodata.",
)
device_option = click.option(
    "--device",
    type=click.Choice(["auto", "cpu", "cuda"]),
    default="auto",
    show_default=True,
    help="auto uses CUDA when onnxruntime-gpu and a GPU are present.",
)
threads_option = click.option(
    "--threads",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="onnxruntime intra-op threads (0 = one per physical core).",
)
overwrite_option = click.option(
    "--overwrite",
    is_flag=True,
    help="Replace outputs that already exist (and remove this command's outputs that an "
    "earlier run wrote and this one does not: detect-change's or map-landcover's polygons, "
    "map-landcover's probabilities, a stack's true-colour .qml).",
)
quiet_option = click.option("--quiet", "-q", is_flag=True, help="No progress bar or info messages.")


def engine_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """The options every inference command takes, in help order."""
    for option in reversed(
        [
            model_option,
            tile_size_option,
            overlap_option,
            batch_size_option,
            min_area_option,
            bands_option,
            extent_option,
            extent_crs_option,
            mask_clouds_option,
            device_option,
            threads_option,
            overwrite_option,
            quiet_option,
        ]
    ):
        func = option(func)
    return func


def handle_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Engine errors -> one clear line on stderr and exit code 1 (usage errors stay 2)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except SwimdiffError as exc:
            click.echo(f"Error: {exc}", err=True)
            sys.exit(1)
        except ValueError as exc:
            click.echo(f"Error: {exc}", err=True)
            sys.exit(2)

    return wrapper


class ProgressBar:
    """A tqdm bar driven by fractions in [0, 1]; silent when ``quiet``. A context manager that
    closes the bar on the way out."""

    def __init__(self, description: str, quiet: bool) -> None:
        self._bar = None
        if not quiet:
            from tqdm import tqdm

            self._bar = tqdm(
                total=1000,
                desc=description,
                unit="‰",
                file=sys.stderr,
                leave=False,
                bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed}<{remaining}",
            )
        self._done = 0

    def __call__(self, fraction: float) -> None:
        if self._bar is not None:
            step = int(fraction * 1000) - self._done
            if step > 0:
                self._bar.update(step)
                self._done += step

    def write(self, message: str) -> None:
        """Print a line on stderr without breaking the bar."""
        if self._bar is not None:
            self._bar.write(message, file=sys.stderr)
        else:
            click.echo(message, err=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()  # also when the job fails, so its message is not drawn over the bar


def echo_log(quiet: bool, bar: ProgressBar) -> Callable[[str], None]:
    """Engine messages: warnings always, info unless ``quiet``."""

    def log(message: str) -> None:
        if not quiet or message.startswith("warning"):
            bar.write(message)

    return log
