"""``swimdiff-geo export CKPT -o model.onnx``: self-describing ONNX for the engine (train extra).

Works for every head (change, segmentation, classification) and for a pretrained encoder
(``encoder.pt``, or ``--embedding`` on a fine-tuned checkpoint): dynamic N/H/W, the model
contract in the metadata, onnx.checker, and a PyTorch parity check on real windows that must
stay within ``--tolerance``. ``--int8`` adds ``<stem>.int8.onnx`` (static quantisation calibrated
on real windows) and reports its F1/accuracy and speed against fp32. Outputs are written under
temporary names and renamed into place only after every check passed; existing outputs need
``--overwrite``.
"""

from __future__ import annotations

from typing import Any

import click

from .finetune import _names, train_errors


@click.command("export")
@click.argument("checkpoint", type=click.Path(exists=True, dir_okay=False))
@click.option(
    "--output",
    "-o",
    "out",
    type=click.Path(dir_okay=False),
    required=True,
    help="The ONNX file to write.",
)
@click.option(
    "--int8",
    is_flag=True,
    help="Also write <stem>.int8.onnx (static int8, calibrated on training windows) "
    "and report its change in F1/accuracy and speed against fp32.",
)
@click.option(
    "--compress",
    is_flag=True,
    help="Also write <stem>.compressed.onnx: the largest convolution weights as per-channel "
    "int8, the other weights as fp16, float32 arithmetic (about 3x smaller); reports its "
    "change in F1/accuracy against fp32.",
)
@click.option(
    "--embedding",
    is_flag=True,
    help="Export only the encoder (model_type embedding) of a fine-tuned checkpoint.",
)
@click.option(
    "--data",
    type=click.Path(exists=True),
    default=None,
    help="Real data for the parity check and int8 calibration: overrides the path "
    "stored in the checkpoint; for an encoder.pt a GeoTIFF with its bands or an OSCD "
    "folder.",
)
@click.option(
    "--bands",
    callback=_names,
    default=None,
    help="Band names of an encoder.pt (default: those in the encoder.json beside it, else "
    "Sentinel-2 L1C for 13 bands).",
)
@click.option(
    "--input-scale",
    type=float,
    default=None,
    help="Raw value multiplier for an encoder.pt (default: the one in the encoder.json beside "
    "it, else 1e-4 for Sentinel-2).",
)
@click.option(
    "--tile-size",
    type=click.IntRange(min=8),
    default=None,
    help="tile_size written into the metadata (default: the checkpoint's).",
)
@click.option(
    "--exporter",
    type=click.Choice(["dynamo", "torchscript"]),
    default="dynamo",
    show_default=True,
    help="torch.onnx exporter (docs/export.md).",
)
@click.option(
    "--tolerance",
    type=click.FloatRange(min=0),
    default=1e-4,
    show_default=True,
    help="Largest allowed |PyTorch - onnxruntime| on the parity windows, relative to "
    "max(1, |output|): absolute for probabilities.",
)
@click.option(
    "--water-mask",
    is_flag=True,
    help="Sentinel-2 change models: set the change probability to 0 where every date is "
    "water (B03 > B08 and B11 < 0.05 reflectance), inside the graph (docs/export.md).",
)
@click.option(
    "--overwrite",
    is_flag=True,
    help="Replace outputs that already exist (the model, its .export.json, and .int8/.compressed "
    "files of an earlier export that this one does not write). They are replaced only once the "
    "new model passed every check.",
)
@train_errors
def export(checkpoint: str, out: str, **kwargs: Any) -> None:
    """Export CHECKPOINT (best.ckpt, last.ckpt or encoder.pt) to ONNX."""
    from swimdiff_geo.export import export_model

    report = export_model(checkpoint, out, print_fn=click.echo, **kwargs)
    parity = report["parity"]
    click.echo(
        f"parity max abs difference {parity['max_abs_diff']:.2e} (relative to the output scale "
        f"{parity['max_scaled_diff']:.2e} <= {parity['tolerance']:.0e}); "
        f"report: {out.rsplit('.', 1)[0]}.export.json"
    )
