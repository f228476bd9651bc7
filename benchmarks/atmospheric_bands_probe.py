"""How much a change model leans on Sentinel-2's atmospheric bands (B01, B09, B10), on OSCD.

    python benchmarks/atmospheric_bands_probe.py /path/to/shared/data/oscd \\
        [--model MODEL_OR_CKPT] [--cities bordeaux,mumbai,saclay_e] [--swap B10 --swap B01,B09,B10]

B01 (coastal aerosol), B09 (water vapour) and B10 (cirrus) see the atmosphere, not the ground:
a difference between two dates in them is weather. Two measurements:

1. Each labelled city's band means per date in the model's standardised units (``(mean * scale
   - training mean) / training std``): how far a city's atmosphere lies from the training
   cities'. B10's training std is about 6 digital numbers, so thin cirrus on one date moves it by
   several standard deviations.
2. The model through the engine (``detect_change``, as ``swimdiff-geo detect-change`` runs it)
   on each city as it is, and again with the bands named by each ``--swap`` of date B replaced
   by date A's (so the two dates share one atmosphere in those bands): P / R / F1 per city and
   pooled. A model that has learnt weather as a cue moves; one that has not stays put.

``--model``: an ONNX change model or a fine-tuning checkpoint (exported here first); default the
bundled ``s2_change_swimdiff``. Labels are read from the dataset folder, never copied.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cva_otsu_oscd import (  # noqa: E402
    changed_pixels,
    counts,
    run_detect_change,
    score_cell,
    scores,
    write_stacks,
)
from water_mask_effect import as_onnx  # noqa: E402

from swimdiff_geo.data.oscd import OSCD_BANDS, OSCDCity, find_oscd_root  # noqa: E402
from swimdiff_geo.inference.contract import read_contract  # noqa: E402
from swimdiff_geo.inference.defaults import default_model_path  # noqa: E402

LABELLED = "beihai,beirut,bercy,cupertino,paris,pisa,rennes,bordeaux,mumbai,saclay_e"


def standardised_band_means(city: OSCDCity, contract, date: int) -> np.ndarray:
    """Per model band, the mean of ``city``'s date ``date`` in the model's input units."""
    idx = [OSCD_BANDS.index(b) for b in contract.bands]
    x = city.read(date).reshape(len(OSCD_BANDS), -1)[idx].astype(np.float64)
    mean = x.mean(axis=1) * contract.input_scale
    return (mean - np.asarray(contract.standardization_mean)) / np.asarray(
        contract.standardization_std
    )


def with_bands_of(a: Path, b: Path, bands: list[str], out: Path) -> Path:
    """A copy ``out`` of the stack ``b`` whose ``bands`` (names) are those of ``a``."""
    shutil.copyfile(b, out)
    idx = [OSCD_BANDS.index(name) + 1 for name in bands]
    with rasterio.open(a) as src:
        data = src.read(idx)
    with rasterio.open(out, "r+") as dst:
        dst.write(data, idx)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("oscd", type=Path)
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--cities", default="bordeaux,mumbai,saclay_e")
    parser.add_argument(
        "--swap", action="append", default=None, help="bands of date B to replace by date A's"
    )
    args = parser.parse_args()
    swaps = [s.split(",") for s in (args.swap or ["B10", "B01,B09,B10"])]
    root = find_oscd_root(args.oscd)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        model = (
            as_onnx(args.model, tmp) if args.model else Path(default_model_path("change_detection"))
        )
        contract = read_contract(model)

        print("Band means per date, in the model's standardised units:\n")
        print("| city | date | " + " | ".join(contract.bands) + " |")
        print("|---|---|" + "---|" * len(contract.bands))
        for name in LABELLED.split(","):
            city = OSCDCity(root, name)
            for date in (1, 2):
                z = standardised_band_means(city, contract, date)
                print(f"| {name} | {date} | " + " | ".join(f"{v:+.1f}" for v in z) + " |")

        variants = ["as it is"] + [f"date B's {'+'.join(s)} := date A's" for s in swaps]
        pooled = {v: np.zeros(3, np.int64) for v in variants}
        rows = ["| city | " + " | ".join(variants) + " |", "|---|" + "---|" * len(variants)]
        for name in args.cities.split(","):
            city = OSCDCity(root, name)
            truth = city.read_labels().astype(bool)
            cells = []
            a, plain_b = write_stacks(city, tmp)  # read and resampled once for every variant
            for k, variant in enumerate(variants):
                b = plain_b
                if k:
                    b = with_bands_of(a, plain_b, swaps[k - 1], tmp / f"{name}_2_swap{k}.tif")
                c = counts(
                    changed_pixels(run_detect_change(a, b, model, tmp / f"{name}_{k}")), truth
                )
                pooled[variant] += c
                cells.append(score_cell(scores(c)))
            rows.append(f"| {name} | " + " | ".join(cells) + " |")
            print(rows[-1], flush=True)
        rows.append(
            "| **pooled** | "
            + " | ".join(f"**{score_cell(scores(pooled[v]))}**" for v in variants)
            + " |"
        )
    print(f"\nF1 (P / R) through the engine, {model.name}:\n")
    print("\n".join(rows))
    print(f"\n{time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
