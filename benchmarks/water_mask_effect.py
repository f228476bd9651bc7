"""What the water mask (``export --water-mask``) does to a change model's scores on OSCD cities.

    python benchmarks/water_mask_effect.py /path/to/shared/data/oscd \\
        MODEL_OR_CKPT:city,city [MODEL_OR_CKPT:city,city ...]

Each argument pairs a model with the labelled cities it never saw in training: an ONNX change
model without a water mask (e.g. ``swimdiff_geo/default_models/s2_change_cva.onnx``) or a
fine-tuning checkpoint (exported to ONNX here first; parity with PyTorch enforced). Every model
runs through the engine (``detect_change``, as ``swimdiff-geo detect-change`` does) twice: as it
is and with :func:`swimdiff_geo.export.add_water_mask`. Prints per city, pooled over the
cities of each run, and over every run (the cities of all the folds of a cross-validation):
precision / recall / F1 without and with the mask, the pixels that are water (by the mask's rule)
on both dates, and how many of the labelled changed pixels lie there (what the mask must not
remove).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cva_otsu_oscd import (  # noqa: E402
    changed_pixels,
    counts,
    run_detect_change,
    score_cell,
    scores,
    write_stacks,
)

from swimdiff_geo.data.oscd import OSCDCity, find_oscd_root  # noqa: E402
from swimdiff_geo.export import (  # noqa: E402
    WATER_MASK_BANDS,
    WATER_SWIR_MAX,
    add_water_mask,
    export_model,
)


def water_on_both_dates(city: OSCDCity) -> np.ndarray:
    """The mask's water (B03 > B08 and B11 < 0.05 reflectance) on both dates; bool ``(H, W)``."""
    green, nir, swir = (city.bands.index(b) for b in WATER_MASK_BANDS)
    return np.logical_and.reduce(
        [
            (x[green] > x[nir]) & (x[swir] < WATER_SWIR_MAX * 1e4)
            for x in (city.read(1), city.read(2))
        ]
    )


def as_onnx(model: Path, tmp: Path) -> Path:
    if model.suffix == ".onnx":
        return model
    out = tmp / f"{model.parent.name}_{model.stem}.onnx"
    export_model(model, out, print_fn=lambda s: None)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("oscd", type=Path)
    parser.add_argument("runs", nargs="+", help="MODEL_OR_CKPT:city,city")
    args = parser.parse_args()
    root = find_oscd_root(args.oscd)
    t0 = time.perf_counter()
    rows = [
        "| model | city | water px (both dates) | changed px there / in all | F1 (P / R) | "
        "F1 (P / R), water masked |",
        "|---|---|---|---|---|---|",
    ]
    pooled = {"plain": np.zeros(3, np.int64), "masked": np.zeros(3, np.int64)}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        for k, run in enumerate(args.runs):
            model_arg, _, cities = run.rpartition(":")
            plain = as_onnx(Path(model_arg), tmp)
            masked = tmp / f"masked_{k}.onnx"
            add_water_mask(plain, masked)
            per_run = {"plain": np.zeros(3, np.int64), "masked": np.zeros(3, np.int64)}
            for name in cities.split(","):
                city = OSCDCity(root, name)
                truth = city.read_labels().astype(bool)
                water = water_on_both_dates(city)
                a, b = write_stacks(city, tmp)  # once for both models
                c = {
                    key: counts(
                        changed_pixels(run_detect_change(a, b, path, tmp / f"{k}_{key}_{name}")),
                        truth,
                    )
                    for key, path in (("plain", plain), ("masked", masked))
                }
                for key in pooled:
                    pooled[key] += c[key]
                    per_run[key] += c[key]
                rows.append(
                    f"| {model_arg} | {name} | {int(water.sum())} | "
                    f"{int((water & truth).sum())} / {int(truth.sum())} | "
                    f"{score_cell(scores(c['plain']))} | {score_cell(scores(c['masked']))} |"
                )
                print(rows[-1], flush=True)
            rows.append(
                f"| {model_arg} | pooled | | | {score_cell(scores(per_run['plain']))} | "
                f"{score_cell(scores(per_run['masked']))} |"
            )
    rows.append(
        f"| **every run** | **pooled** | | | **{score_cell(scores(pooled['plain']))}** | "
        f"**{score_cell(scores(pooled['masked']))}** |"
    )
    print("\n".join(rows))
    print(f"\n{time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
