"""``swimdiff-geo pretrain``: SwiMDiff self-supervised pretraining (needs the ``train`` extra).

Options come from three layers, later ones winning: built-in defaults (docs/pretraining.md),
``--config FILE`` (YAML with the same option names, dashes or underscores), then the command
line. Values from the file go through the same types and ranges as the flags. torch and
Lightning are imported only when the command runs.

Exit status: 0 done, 1 bad data or a run folder in the way, 2 bad options, 143 stopped by
SIGTERM (after writing last.ckpt).
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Any

import click

FORMATS = ("auto", "oscd", "manifest", "folder", "ssl4eo")
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps")


def _floats(ctx: click.Context, param: click.Parameter, value: str | None) -> list[float] | None:
    if value is None:
        return None
    try:
        return [float(v) for v in value.replace(" ", "").split(",") if v]
    except ValueError:
        raise click.BadParameter("expected comma-separated numbers, e.g. 0.1,0.12,0.2") from None


def _bands(ctx: click.Context, param: click.Parameter, value: str | None) -> list[str] | None:
    if value is None:
        return None
    bands = [b for b in value.replace(" ", "").split(",") if b]
    if not bands:
        raise click.BadParameter("expected comma-separated band names, e.g. B02,B03,B04,B08")
    return bands


@click.command("pretrain")
@click.option(
    "--data",
    type=click.Path(exists=True),
    default=None,
    help="Archive to pretrain on: OSCD root, manifest CSV (path,scene_id[,date]), "
    "folder of GeoTIFFs, or SSL4EO-S12/SeCo root.",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    default=None,
    help="Output folder: last.ckpt, encoder.pt, encoder.json, metrics.csv, config.yaml.",
)
@click.option(
    "--config",
    "config_file",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="YAML file with any of these options (CLI flags win).",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(FORMATS),
    default=None,
    help="Layout of --data.  [default: auto]",
)
@click.option(
    "--band-spec", default=None, help="Band spec of swimdiff_geo.bands.  [default: sentinel2_l1c]"
)
@click.option(
    "--bands",
    callback=_bands,
    default=None,
    help="Comma-separated subset of the spec's bands, in input order.  [default: all]",
)
@click.option(
    "--input-scale",
    type=float,
    default=None,
    help="Multiplier of raw values.  [default: the spec's, 1e-4 for Sentinel-2 L1C]",
)
@click.option(
    "--nodata",
    type=float,
    default=None,
    help="Nodata value when a file declares none.  [default: file's, else 0]",
)
@click.option(
    "--band-mean",
    callback=_floats,
    default=None,
    help="Per-band mean of scaled values.  [default: computed from the data]",
)
@click.option(
    "--band-std",
    callback=_floats,
    default=None,
    help="Per-band std of scaled values.  [default: computed from the data]",
)
@click.option(
    "--standardize-input/--no-standardize-input",
    default=None,
    help="Feed the encoder standardised bands.  [default: no, scaled bands]",
)
@click.option(
    "--crop-size",
    type=click.IntRange(min=8),
    default=None,
    help="View size in pixels after augmentation.  [default: 64]",
)
@click.option(
    "--window-size",
    type=click.IntRange(min=8),
    default=None,
    help="Window read from the rasters.  [default: --crop-size]",
)
@click.option(
    "--samples-per-epoch",
    type=click.IntRange(min=1),
    default=None,
    help="Windows per epoch.  [default: non-overlapping windows in the archive]",
)
@click.option(
    "--temporal/--no-temporal",
    default=None,
    help="Second view from another date of the scene.  [default: no]",
)
@click.option(
    "--max-nodata-fraction",
    type=click.FloatRange(0, 1),
    default=None,
    help="Windows with more nodata are redrawn.  [default: 0.5]",
)
@click.option(
    "--scene-grid",
    type=click.IntRange(min=0),
    default=None,
    help="Split rasters into scenes of N x N px (0: one scene per place).  [default: 0]",
)
@click.option(
    "--stats-samples",
    type=click.IntRange(min=1),
    default=None,
    help="Windows used to compute band mean/std.  [default: 64]",
)
@click.option(
    "--rrc-scale",
    callback=_floats,
    default=None,
    help="Random resized crop area range MIN,MAX.  [default: 0.5,1.0]",
)
@click.option(
    "--brightness",
    type=click.FloatRange(0, 1),
    default=None,
    help="Per-band brightness jitter (+-).  [default: 0.2]",
)
@click.option(
    "--contrast",
    type=click.FloatRange(0, 1),
    default=None,
    help="Per-band contrast jitter (+-).  [default: 0.2]",
)
@click.option(
    "--jitter-p",
    type=click.FloatRange(0, 1),
    default=None,
    help="Probability of the band jitter.  [default: 0.8]",
)
@click.option(
    "--blur-p",
    type=click.FloatRange(0, 1),
    default=None,
    help="Probability of Gaussian blur.  [default: 0.5]",
)
@click.option(
    "--rot90-p",
    type=click.FloatRange(0, 1),
    default=None,
    help="Probability of a 90/180/270-degree turn.  [default: 0.5]",
)
@click.option(
    "--proj-hidden",
    type=click.IntRange(min=1),
    default=None,
    help="Projection MLP hidden width.  [default: 512]",
)
@click.option(
    "--proj-dim",
    type=click.IntRange(min=1),
    default=None,
    help="Embedding size of the projection MLP.  [default: 128]",
)
@click.option(
    "--arch",
    type=click.Choice(["resnet18", "resnet50"]),
    default=None,
    help="Encoder.  [default: resnet18]",
)
@click.option(
    "--init-weights",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="torchvision/timm/TorchGeo/encoder.pt checkpoint for the encoder.",
)
@click.option(
    "--queue-size",
    type=click.IntRange(min=1),
    default=None,
    help="MoCo queue length (shrunk to one epoch on tiny data).  [default: 16384]",
)
@click.option(
    "--momentum",
    type=click.FloatRange(0, 1),
    default=None,
    help="EMA momentum of the key encoder.  [default: 0.99]",
)
@click.option(
    "--swm-mode",
    type=click.Choice(["none", "remove", "positive", "soft"]),
    default=None,
    help="Scene-wide matching of false negatives.  [default: soft]",
)
@click.option(
    "--tau",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Contrastive temperature.  [default: 0.2]",
)
@click.option(
    "--tau-prime",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Temperature of the false-negative distribution.  [default: 0.1]",
)
@click.option(
    "--alpha",
    type=click.FloatRange(min=0),
    default=None,
    help="Target mass of false negatives relative to the positive.  [default: 0.5]",
)
@click.option(
    "--lambda-c",
    type=click.FloatRange(min=0),
    default=None,
    help="Weight of the contrastive loss.  [default: 1]",
)
@click.option(
    "--lambda-d",
    type=click.FloatRange(min=0),
    default=None,
    help="Weight of the diffusion loss (0: no denoiser).  [default: 1]",
)
@click.option(
    "--diffusion-steps", type=click.IntRange(min=1), default=None, help="DDPM T.  [default: 1000]"
)
@click.option(
    "--noise-schedule",
    type=click.Choice(["linear", "cosine"]),
    default=None,
    help="DDPM beta schedule.  [default: linear]",
)
@click.option(
    "--cond-mode",
    type=click.Choice(["multiscale", "pooled"]),
    default=None,
    help="Denoiser conditioning.  [default: multiscale]",
)
@click.option(
    "--cond-fusion",
    type=click.Choice(["add", "concat"]),
    default=None,
    help="How multiscale maps enter the UNet.  [default: add]",
)
@click.option(
    "--unet-channels",
    type=click.IntRange(min=4),
    default=None,
    help="Width of the denoiser's first level.  [default: 32]",
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=2),
    default=None,
    help="Windows per device per step.  [default: 16]",
)
@click.option(
    "--lr",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Learning rate.  [default: 0.03 x global batch / 256]",
)
@click.option(
    "--base-lr",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="LR per 256 samples when --lr is not given.  [default: 0.03]",
)
@click.option(
    "--sgd-momentum",
    type=click.FloatRange(0, 1),
    default=None,
    help="SGD momentum.  [default: 0.9]",
)
@click.option(
    "--weight-decay",
    type=click.FloatRange(min=0),
    default=None,
    help="SGD weight decay.  [default: 1e-4]",
)
@click.option(
    "--warmup-steps",
    type=click.IntRange(min=0),
    default=None,
    help="Linear LR warm-up before the cosine decay.  [default: 0]",
)
@click.option("--max-steps", type=int, default=None, help="Stop after N optimiser steps.")
@click.option("--max-epochs", type=click.IntRange(min=1), default=None, help="Stop after N epochs.")
@click.option(
    "--accelerator",
    type=click.Choice(ACCELERATORS),
    default=None,
    help="Lightning accelerator.  [default: auto]",
)
@click.option(
    "--devices",
    default=None,
    help="Devices per node: a positive number, -1 (all), a list such as 0,1, or auto.  "
    "[default: auto]",
)
@click.option(
    "--num-nodes",
    type=click.IntRange(min=1),
    default=None,
    help="Nodes (torchrun / SLURM).  [default: 1]",
)
@click.option(
    "--precision",
    default=None,
    help="Lightning precision: 32-true, bf16-mixed, 16-mixed.  [default: 32-true]",
)
@click.option(
    "--sync-batchnorm/--no-sync-batchnorm",
    default=None,
    help="SyncBatchNorm across GPUs when training on several.  [default: yes]",
)
@click.option(
    "--num-workers",
    type=click.IntRange(min=0),
    default=None,
    help="Data loader processes per device.  [default: 2]",
)
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    default=None,
    help="torch intra-op CPU threads per process.  [default: torch's choice]",
)
@click.option(
    "--checkpoint-every",
    type=click.IntRange(min=1),
    default=None,
    help="Write last.ckpt and encoder.pt every N steps.  [default: 100]",
)
@click.option(
    "--log-every",
    type=click.IntRange(min=1),
    default=None,
    help="Append to metrics.csv every N steps.  [default: 10]",
)
@click.option(
    "--resume",
    default=None,
    help="Checkpoint to continue from, or 'auto' for OUT/last.ckpt if present.",
)
@click.option(
    "--overwrite",
    is_flag=True,
    default=None,
    help="Start over in an --out that holds an earlier run (its files are replaced).",
)
@click.option("--seed", type=int, default=None, help="Random seed.  [default: 0]")
@click.option(
    "--progress-bar/--no-progress-bar",
    default=None,
    help="Show the progress bar with the loss terms.  [default: yes]",
)
def pretrain(config_file: str | None, fmt: str | None, **options: Any) -> None:
    """SwiMDiff self-supervised pretraining of a ResNet encoder on unlabelled imagery.

    Example (CPU; on GPUs add --accelerator gpu --devices 4):

        swimdiff-geo pretrain --data /path/to/oscd --out runs/pretrain --max-steps 300
    """
    try:
        import lightning  # noqa: F401
        import torch  # noqa: F401
    except ImportError as exc:
        click.echo(
            f"swimdiff-geo pretrain needs the training dependencies ({exc.name} is missing): "
            "pip install 'swimdiff-geo[train]'",
            err=True,
        )
        sys.exit(1)
    import yaml

    from swimdiff_geo.train.pretrain import PretrainConfig
    from swimdiff_geo.train.pretrain import pretrain as run_pretrain

    values: dict[str, Any] = {}
    if config_file:
        try:
            loaded = yaml.safe_load(Path(config_file).read_text()) or {}
        except yaml.YAMLError as exc:
            raise click.UsageError(f"{config_file}: not valid YAML ({exc})") from None
        if not isinstance(loaded, dict):
            raise click.UsageError(f"{config_file}: expected a mapping of option: value")
        loaded.pop("resolved", None)  # a previous run's config.yaml can be reused as is
        values.update(_config_values(click.get_current_context(), config_file, loaded))
    if fmt is not None:
        options["format"] = fmt
    values.update({k: v for k, v in options.items() if v is not None})
    try:
        cfg = PretrainConfig.from_dict(values, source=config_file or "options")
        cfg.validate()
    except (ValueError, TypeError) as exc:
        raise click.UsageError(str(exc)) from None
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    try:
        out = run_pretrain(cfg)
    except (ValueError, FileNotFoundError, FileExistsError) as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(1)
    except SIGTERMException:
        # Lightning's SystemExit carries no code (status 0): a scheduler must see the kill.
        click.echo("pretraining stopped by SIGTERM; continue with --resume auto", err=True)
        sys.exit(128 + signal.SIGTERM)
    from lightning.pytorch.utilities.rank_zero import rank_zero_only

    if rank_zero_only.rank == 0:  # DDP runs this command once per process; the trainer set it
        click.echo(f"pretraining done: {out / 'encoder.pt'}")


def _config_values(ctx: click.Context, source: str, loaded: dict[str, Any]) -> dict[str, Any]:
    """The ``--config`` file's values, converted and range-checked as their flags would be.

    Keys may use dashes or underscores; null means the option's default. Raises UsageError
    naming the file and the key.
    """
    params = {p.name: p for p in ctx.command.params if p.name and p.name != "config_file"}
    params["format"] = params.pop("fmt")
    values: dict[str, Any] = {}
    unknown = []
    for key, value in loaded.items():
        name = str(key).replace("-", "_")
        param = params.get(name)
        if param is None:
            unknown.append(name)
            continue
        if value is None:
            continue
        if isinstance(value, list) and param.callback in (_floats, _bands):
            value = ",".join(str(v) for v in value)  # YAML lists read like the flag's text
        if isinstance(value, dict | list):
            raise click.UsageError(f"{source}: {key}: expected a single value, got {value!r}")
        try:
            if isinstance(param, click.Option) and param.is_flag and not param.is_bool_flag:
                converted = click.BOOL.convert(value, param, ctx)
            else:
                converted = param.type.convert(value, param, ctx)
            if param.callback is not None:
                converted = param.callback(ctx, param, converted)
        except click.BadParameter as exc:
            raise click.UsageError(f"{source}: {key}: {exc.format_message()}") from None
        except (TypeError, ValueError) as exc:
            raise click.UsageError(f"{source}: {key}: invalid value {value!r} ({exc})") from None
        values[name] = converted
    if unknown:
        raise click.UsageError(f"{source}: unknown option(s) {', '.join(sorted(unknown))}")
    return values
