"""Score a change-detection ONNX model on labelled OSCD cities through the real engine.

    python benchmarks/evaluate_change_model.py /path/to/shared/data/oscd \\
        --model swimdiff_geo/default_models/s2_change_swimdiff.onnx \\
        --cities bordeaux,mumbai,saclay_e [--overlap 50]

Each city's two dates are written as 13-band GeoTIFFs (10 m grid, as the loader resamples them),
``detect_change`` runs on them exactly as ``swimdiff-geo detect-change`` does (tiling, Hann
blending, nodata handling, the model's own threshold), and the change mask is scored against the
city's label: precision, recall and F1 of the change class per city and pooled over all pixels of
all cities. Prints a Markdown table; labels are read from the dataset folder, never copied.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cva_otsu_oscd import counts, engine_change_mask, scores  # noqa: E402

from swimdiff_geo.data.oscd import OSCDCity, find_oscd_root  # noqa: E402
from swimdiff_geo.inference.defaults import default_model_path  # noqa: E402


def evaluate(
    oscd: Path, model: str, cities: list[str], overlap: float | None = None
) -> dict[str, dict[str, float]]:
    """Per-city and pooled (``"all"``) precision/recall/F1 of ``model`` (``overlap``: the
    tiles' overlap in percent, None = the model's own)."""
    root = find_oscd_root(oscd)
    result: dict[str, dict[str, float]] = {}
    pooled = np.zeros(3, np.int64)
    with tempfile.TemporaryDirectory() as tmp:
        for name in cities:
            city = OSCDCity(root, name)
            truth = city.read_labels().astype(bool)
            c = counts(engine_change_mask(city, model, Path(tmp), overlap), truth)
            pooled += c
            result[name] = scores(c) | {"changed_px": int(truth.sum())}
    result["all"] = scores(pooled) | {
        "changed_px": int(sum(r["changed_px"] for r in result.values()))
    }
    return result


def table(result: dict[str, dict[str, float]]) -> str:
    rows = ["| city | precision | recall | F1 | changed px |", "|---|---|---|---|---|"]
    for name, s in result.items():
        label = "**all (pooled)**" if name == "all" else name
        rows.append(
            f"| {label} | {s['precision']:.3f} | {s['recall']:.3f} | {s['f1']:.3f} | "
            f"{s['changed_px']} |"
        )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("oscd", type=Path)
    parser.add_argument("--model", default=None, help="ONNX model (default: the bundled one)")
    parser.add_argument("--cities", default="bordeaux,mumbai,saclay_e")
    parser.add_argument(
        "--overlap", type=float, default=None, help="tile overlap in percent (default: the model's)"
    )
    args = parser.parse_args()
    t0 = time.perf_counter()
    model = args.model or default_model_path("change_detection")
    result = evaluate(args.oscd, model, args.cities.split(","), args.overlap)
    print(table(result))
    print(f"\n{time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
