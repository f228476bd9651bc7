"""Turn a fine-tuning checkpoint into a bundled default model (swimdiff_geo/default_models).

    python tools/package_default_model.py runs/default/s2_change_swimdiff/best.ckpt \\
        --name s2_change_swimdiff --tile-size 256 \\
        --license "CC-BY-NC-SA-4.0 (trained on the OSCD labels; see docs/models.md)" \\
        --description "..."

Exports with ``swimdiff_geo.export.export_model(..., compress=True)`` (parity with PyTorch
enforced; int8 for the largest convolution weights, fp16 for the rest, float32 arithmetic),
writes the compressed file as ``default_models/<name>.onnx`` with ``license``, ``description``
and any ``--set KEY=JSON`` contract overrides in its metadata, and the export report (fp32 vs
compressed F1 / accuracy, largest probability difference, sizes) as ``<name>.export.json`` next
to the checkpoint.
Refuses a model over 25 MB.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

import onnx

from swimdiff_geo.export import export_model, read_metadata, write_metadata
from swimdiff_geo.inference.contract import load_model
from swimdiff_geo.inference.defaults import DEFAULT_MODELS_DIR

MAX_BYTES = 25_000_000


def set_metadata(path: Path, entries: dict[str, object]) -> None:
    """Set metadata keys (values JSON-encoded, like every key the exporter writes)."""
    model = onnx.load(str(path))
    encoded = {key: json.dumps(value) for key, value in entries.items()}
    write_metadata(model, read_metadata(model) | encoded)
    onnx.save(model, str(path))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--name", required=True, help="file stem in default_models/")
    parser.add_argument("--tile-size", type=int, default=None)
    parser.add_argument("--license", required=True)
    parser.add_argument("--description", default=None)
    parser.add_argument("--data", default=None, help="data for the checks (default: the ckpt's)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=JSON",
        help="override a contract key, e.g. input_scale=0.0001 (the model then takes DN) or "
        'class_colors=\'{"0": "#e31a1c"}\'; repeatable',
    )
    parser.add_argument(
        "--water-mask",
        action="store_true",
        help="change models: probability 0 where every date is water (export --water-mask)",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = Path(tmp) / f"{args.name}.onnx"
        report = export_model(
            args.checkpoint, fp32, compress=True, tile_size=args.tile_size, data=args.data,
            water_mask=args.water_mask,
        )  # fmt: skip
        small = Path(report["compressed"]["onnx"])
        entries: dict[str, object] = {"license": args.license}
        for item in args.set:
            key, _, value = item.partition("=")
            entries[key] = json.loads(value)
        if args.description:
            entries["description"] = args.description
        set_metadata(small, entries)
        if small.stat().st_size > MAX_BYTES:
            raise SystemExit(f"{small.name}: {small.stat().st_size / 1e6:.1f} MB > 25 MB")
        load_model(small)  # still honours the contract
        target = DEFAULT_MODELS_DIR / f"{args.name}.onnx"
        shutil.copyfile(small, target)
    report_path = args.checkpoint.with_name(f"{args.name}.export.json")
    report_path.write_text(json.dumps(report, indent=2))
    print(f"{target} ({target.stat().st_size / 1e6:.1f} MB); report {report_path}")


if __name__ == "__main__":
    main()
