"""``swimdiff-geo finetune change|landcover``: train downstream heads (needs the ``train`` extra).

torch and Lightning are imported only when a sub-command runs. Each run writes ``best.ckpt``
(best validation F1), ``last.ckpt`` (``--resume`` continues from it), ``logs/version_N/`` and
``metrics.json`` into ``--out``; export with ``swimdiff-geo export OUT/best.ckpt -o model.onnx``.
A folder holding an earlier run needs ``--resume`` or ``--overwrite``. SIGTERM (a scheduler's
time limit, ``kill``) stops training at the next batch and exits with status 143; ``last.ckpt``
of the last finished epoch stays for ``--resume``.
"""

from __future__ import annotations

import functools
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from swimdiff_geo.inference.errors import SwimdiffError


def _names(ctx: click.Context, param: click.Parameter, value: str | None) -> list[str] | None:
    """``a,b,c`` -> ["a", "b", "c"]."""
    if value is None:
        return None
    names = [v for v in value.replace(" ", "").split(",") if v]
    if not names:
        raise click.BadParameter("expected a comma-separated list")
    return names


def _colors(ctx: click.Context, param: click.Parameter, value: str | None) -> dict[str, str] | None:
    """``forest=#1b7837,water=#2166ac`` -> {"forest": "#1b7837", ...}."""
    if value is None:
        return None
    out = {}
    for item in value.split(","):
        name, _, color = item.partition("=")
        color = color.strip()
        if not name.strip() or len(color) != 7 or not color.startswith("#"):
            raise click.BadParameter(f"expected CLASS=#rrggbb, got {item!r}")
        out[name.strip()] = color.lower()
    return out


def _pos_weight(ctx: click.Context, param: click.Parameter, value: str) -> float | str:
    if value == "auto":
        return value
    try:
        weight = float(value)
    except ValueError:
        raise click.BadParameter("expected 'auto' or a positive number") from None
    if weight <= 0:
        raise click.BadParameter("must be positive")
    return weight


def train_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Bad data or arguments -> one clear 'Error: ...' line and exit code 1."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except ImportError as exc:
            click.echo(
                f"Error: {exc}. Training needs the train extra: pip install 'swimdiff-geo[train]'",
                err=True,
            )
            sys.exit(1)
        except (ValueError, FileNotFoundError, SwimdiffError) as exc:
            click.echo(f"Error: {exc}", err=True)
            sys.exit(1)

    return wrapper


def common_training_options(func: Callable[..., Any]) -> Callable[..., Any]:
    options = [
        click.option(
            "--out",
            "out_dir",
            type=click.Path(file_okay=False),
            required=True,
            help="Output folder: best.ckpt, last.ckpt, logs/, metrics.json.",
        ),
        click.option(
            "--encoder",
            type=click.Path(exists=True, dir_okay=False),
            default=None,
            help="Pretrained encoder weights (encoder.pt from pretraining, or a "
            "torchvision/timm/TorchGeo ResNet checkpoint). Default: random init.",
        ),
        click.option(
            "--arch",
            type=click.Choice(["resnet18", "resnet50"]),
            default="resnet18",
            show_default=True,
        ),
        click.option(
            "--freeze-encoder",
            is_flag=True,
            help="Train only the head; encoder weights and batch-norm statistics stay.",
        ),
        click.option("--epochs", type=click.IntRange(min=1), default=20, show_default=True),
        click.option(
            "--lr",
            type=click.FloatRange(min=0, min_open=True),
            default=1e-3,
            show_default=True,
            help="AdamW learning rate (cosine schedule).",
        ),
        click.option(
            "--encoder-lr-mult",
            type=click.FloatRange(min=0),
            default=1.0,
            show_default=True,
            help="The encoder learns at --lr times this (e.g. 0.1 keeps a pretrained encoder "
            "close to its pretraining when labels are few).",
        ),
        click.option(
            "--weight-decay", type=click.FloatRange(min=0), default=1e-4, show_default=True
        ),
        click.option(
            "--batch-size", "--batch", type=click.IntRange(min=1), default=8, show_default=True
        ),
        click.option(
            "--samples-per-epoch",
            type=click.IntRange(min=1),
            default=None,
            help="Random training windows per epoch. Default: enough to cover the "
            "training area about once.",
        ),
        click.option(
            "--val-tile",
            type=click.IntRange(min=16),
            default=256,
            show_default=True,
            help="Validation tile size in px; also the exported model's tile_size.",
        ),
        click.option(
            "--normalize",
            type=click.Choice(["scale", "standardize"]),
            default="scale",
            show_default=True,
            help="scale: DN x input scale (what SwiMDiff pretraining feeds the encoder); "
            "standardize: also per-band mean/std of the training data.",
        ),
        click.option(
            "--input-scale",
            type=float,
            default=None,
            help="Multiplier of raw values. Default: 1e-4 for Sentinel-2 / 16-bit "
            "data, 1/255 for 8-bit, 1 for float.",
        ),
        click.option("--seed", type=int, default=0, show_default=True),
        click.option(
            "--workers",
            "num_workers",
            type=click.IntRange(min=0),
            default=0,
            show_default=True,
            help="DataLoader worker processes.",
        ),
        click.option(
            "--threads",
            type=click.IntRange(min=1),
            default=None,
            help="torch intra-op CPU threads (1 per process when jobs share the cores).  "
            "[default: torch's choice]",
        ),
        click.option("--resume", is_flag=True, help="Continue from OUT/last.ckpt if present."),
        click.option(
            "--overwrite",
            is_flag=True,
            help="Remove an earlier run's checkpoints, logs/ and metrics.json from --out "
            "before training (without it or --resume, such a folder is refused).",
        ),
        click.option(
            "--accelerator",
            default="auto",
            show_default=True,
            help="Lightning accelerator: auto, cpu, gpu.",
        ),
        click.option(
            "--progress/--no-progress",
            "progress_bar",
            default=False,
            help="Show Lightning's progress bar (one line per epoch is always printed).",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


@click.group("finetune")
def finetune() -> None:
    """Fine-tune a change-detection or land-cover head on a (pretrained) encoder."""


@finetune.command("change")
@click.option(
    "--data",
    type=click.Path(exists=True),
    required=True,
    help="An OSCD folder (Images + Train Labels) or a YAML/CSV manifest of image "
    "pairs with change masks or polygons (docs/finetuning.md).",
)
@click.option(
    "--train-cities",
    callback=_names,
    default=None,
    help="Comma-separated training cities (OSCD) or pair names (manifest).",
)
@click.option(
    "--val-cities",
    callback=_names,
    default=None,
    help="Comma-separated validation cities / pair names.",
)
@click.option(
    "--bands",
    callback=_names,
    default=None,
    help="OSCD bands to use, e.g. B02,B03,B04,B08. Default: all 13.",
)
@click.option(
    "--crop-size",
    type=click.IntRange(min=16),
    default=96,
    show_default=True,
    help="Training window size in px.",
)
@click.option(
    "--loss", type=click.Choice(["bce", "dice", "bce+dice"]), default="bce+dice", show_default=True
)
@click.option(
    "--pos-weight",
    callback=_pos_weight,
    default="auto",
    show_default=True,
    help="BCE weight of change pixels; auto = sqrt of the no-change/change pixel ratio (max 50).",
)
@click.option(
    "--threshold",
    type=click.FloatRange(0, 1),
    default=0.5,
    show_default=True,
    help="Decision threshold for the metrics and the exported model.",
)
@click.option(
    "--radiometric-jitter",
    type=click.FloatRange(0, 1),
    default=0.0,
    show_default=True,
    help="Per-date, per-band random gain 1±J and offset ±J band std on training windows, "
    "so that illumination, haze and water colour differences are not learned as change.",
)
@common_training_options
@train_errors
def change(**kwargs: Any) -> None:
    """Train a Siamese change detector; best.ckpt is kept by validation F1 of the change class."""
    from swimdiff_geo.train.finetune import finetune_change

    _set_threads(kwargs.pop("threads"))
    summary = _train(finetune_change, kwargs)
    _report(summary)


@finetune.command("landcover")
@click.option(
    "--data",
    type=click.Path(exists=True),
    required=True,
    help="A raster (with --labels) for segmentation, or a folder of class folders of "
    "GeoTIFF/PNG/JPEG patches (EuroSAT layout) for patch classification.",
)
@click.option(
    "--labels",
    type=click.Path(exists=True),
    default=None,
    help="Training polygons or points (GeoPackage, shapefile, GeoJSON).",
)
@click.option("--class-field", default=None, help="Attribute of --labels holding the class.")
@click.option("--layer", default=None, help="Layer of --labels (default: the first).")
@click.option(
    "--bands",
    callback=_names,
    default=None,
    help="Names of the raster's bands for the model metadata (default: band "
    "descriptions, Sentinel-2 names for 13 bands, else B1..Bn).",
)
@click.option(
    "--linear-probe",
    is_flag=True,
    help="Patch classification with a frozen encoder and a linear head.",
)
@click.option(
    "--head",
    type=click.Choice(["linear", "mlp"]),
    default=None,
    help="Patch classifier head (default linear).",
)
@click.option(
    "--crop-size",
    type=click.IntRange(min=8),
    default=None,
    help="Training window (segmentation, default 96 or the raster size) or patch "
    "size (classification, default: the patches' size).",
)
@click.option(
    "--block-size",
    type=click.IntRange(min=4),
    default=64,
    show_default=True,
    help="Side in px of the spatial blocks held out for validation.",
)
@click.option(
    "--val-fraction",
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    default=0.2,
    show_default=True,
    help="Share of labelled pixels (blocks) or patches held out for validation.",
)
@click.option(
    "--block-buffer",
    type=click.IntRange(min=0),
    default=2,
    show_default=True,
    help="Training labels closer than this (px) to a validation block are dropped.",
)
@click.option(
    "--class-weighting",
    type=click.Choice(["balanced", "none"]),
    default="balanced",
    show_default=True,
)
@click.option(
    "--class-colors",
    callback=_colors,
    default=None,
    help="Map colours, e.g. forest=#1b7837,water=#2166ac (others: a palette).",
)
@common_training_options
@train_errors
def landcover(**kwargs: Any) -> None:
    """Train land-cover segmentation (raster + polygons/points) or patch classification."""
    from swimdiff_geo.train.finetune import finetune_landcover

    _set_threads(kwargs.pop("threads"))
    summary = _train(finetune_landcover, kwargs)
    _report(summary)


SIGTERM_EXIT = 128 + signal.SIGTERM  # 143, what a shell reports for a process ended by SIGTERM


def _train(run: Callable[..., dict[str, Any]], kwargs: dict[str, Any]) -> dict[str, Any]:
    """Run ``run(**kwargs)``; SIGTERM during training exits with status 143.

    cli/main.py leaves SIGTERM to Lightning for training commands: Lightning finishes the current
    batch and raises SIGTERMException, a SystemExit without a code, i.e. status 0, which would
    tell a scheduler the run succeeded.
    """
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    try:
        return run(**kwargs)
    except SIGTERMException:
        last = Path(kwargs["out_dir"]) / "last.ckpt"
        kept = (
            f"{last} holds the last finished epoch; continue with --resume"
            if last.is_file()
            else "no epoch had finished, so there is nothing to resume"
        )
        click.echo(f"Stopped by SIGTERM: {kept}", err=True)
        sys.exit(SIGTERM_EXIT)


def _set_threads(threads: int | None) -> None:
    if threads:
        import torch

        torch.set_num_threads(threads)


def _report(summary: dict[str, Any]) -> None:
    best = summary.get("best", {})
    shown = ", ".join(f"{k}={v:.4f}" for k, v in best.items() if isinstance(v, float))
    click.echo(f"best epoch {best.get('epoch')}: {shown}")
    click.echo(f"checkpoint: {summary['best_checkpoint']} ({summary['wall_time_s']} s)")
