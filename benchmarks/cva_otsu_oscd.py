"""Change-vector analysis baselines on the labelled OSCD cities: per-city and pooled P/R/F1.

    python benchmarks/cva_otsu_oscd.py /path/to/shared/data/oscd --out docs/baselines.md

Two rows per city:
- "CVA + Otsu": the classic baseline; CVA magnitude over the 13 bands (reflectance), thresholded
  at that city's own Otsu threshold;
- "bundled CVA model": swimdiff_geo/default_models/s2_change_cva.onnx (the bundled default until
  the trained model replaced it) run through the real engine (detect_change on GeoTIFFs of the
  city's 10 m stacks) at its threshold 0.5, i.e. one global CVA threshold (Otsu over the
  images of all 24 cities, no labels used).
F1 / precision / recall of the change class, counted over all pixels of a city, and over all
pixels of all cities together (pooled). Labels are read from the dataset folder, never copied.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio

from swimdiff_geo.data.oscd import OSCDCity, find_oscd_root, list_oscd_cities
from swimdiff_geo.inference.change import ChangeOptions, ChangeOutputs, detect_change

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
from build_baseline_models import otsu  # noqa: E402


def counts(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """(tp, fp, fn) of the change class."""
    return np.array([(pred & truth).sum(), (pred & ~truth).sum(), (~pred & truth).sum()], np.int64)


def scores(c: np.ndarray) -> dict[str, float]:
    tp, fp, fn = (int(v) for v in c)
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    return {"precision": p, "recall": r, "f1": 2 * p * r / (p + r) if p + r else 0.0}


def score_cell(s: dict[str, float]) -> str:
    """A table cell ``F1 (precision / recall)`` of :func:`scores`' dict."""
    return f"{s['f1']:.3f} ({s['precision']:.3f} / {s['recall']:.3f})"


def write_stack(city: OSCDCity, date: int, path: Path) -> None:
    data = city.read(date=date).round().astype(np.uint16)
    profile = {"driver": "GTiff", "width": data.shape[2], "height": data.shape[1], "count": 13,
               "dtype": "uint16", "crs": city.crs, "transform": city.transform,
               "compress": "deflate"}  # fmt: skip
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
        for i, band in enumerate(city.bands, start=1):
            dst.set_band_description(i, band)


CVA_MODEL = (
    Path(__file__).resolve().parent.parent / "swimdiff_geo/default_models/s2_change_cva.onnx"
)


def cva_otsu_mask(city: OSCDCity) -> np.ndarray:
    """Change where the CVA magnitude over the 13 bands (reflectance) exceeds the city's own
    Otsu threshold; bool (H, W)."""
    a, b = city.read(date=1) * 1e-4, city.read(date=2) * 1e-4
    magnitude = np.sqrt(((b - a) ** 2).sum(axis=0))
    return magnitude > otsu(magnitude.ravel())


def write_stacks(city: OSCDCity, folder: Path) -> list[Path]:
    """Both dates of ``city`` as 13-band GeoTIFFs ``folder/<city>_1.tif`` and ``_2.tif``."""
    paths = [folder / f"{city.name}_{d}.tif" for d in (1, 2)]
    for d, path in zip((1, 2), paths, strict=True):
        write_stack(city, d, path)
    return paths


def run_detect_change(
    a: Path, b: Path, model: str | Path | None, out_dir: Path, overlap: float | None = None
) -> ChangeOutputs:
    """``detect_change`` on the GeoTIFFs ``a`` and ``b`` into ``out_dir`` as ``swimdiff-geo
    detect-change`` runs it (tiling, blending, nodata and the model's threshold; ``model`` None =
    the bundled default; ``overlap``: the tiles' overlap in percent, None = the model's)."""
    outputs = ChangeOutputs.in_dir(str(out_dir), polygons=False)
    options = ChangeOptions(model=None if model is None else str(model), device="cpu",
                            overlap=overlap)  # fmt: skip
    detect_change(str(a), str(b), outputs, options)
    return outputs


def changed_pixels(outputs: ChangeOutputs) -> np.ndarray:
    """The change mask a run wrote; bool (H, W)."""
    with rasterio.open(outputs.mask) as m:
        return m.read(1) == 1


def engine_change_mask(
    city: OSCDCity, model: str | Path, tmp: Path, overlap: float | None = None
) -> np.ndarray:
    """The change mask ``detect-change`` makes with ``model`` from GeoTIFFs of the city's two
    dates (:func:`run_detect_change`); bool (H, W)."""
    a, b = write_stacks(city, tmp)
    return changed_pixels(run_detect_change(a, b, model, tmp / city.name, overlap))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("oscd", type=Path)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    root = find_oscd_root(args.oscd)
    rows, pooled = (
        [],
        {"CVA + Otsu": np.zeros(3, np.int64), "bundled CVA model": np.zeros(3, np.int64)},
    )
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for name in list_oscd_cities(root, labelled_only=True):
            city = OSCDCity(root, name)
            truth = city.read_labels().astype(bool)
            c_otsu = counts(cva_otsu_mask(city), truth)
            c_model = counts(engine_change_mask(city, CVA_MODEL, Path(tmp)), truth)
            for method, c in (("CVA + Otsu", c_otsu), ("bundled CVA model", c_model)):
                pooled[method] += c
                rows.append((name, method, scores(c), int(truth.sum()), truth.size))
            print(name, {k: round(v, 3) for k, v in scores(c_otsu).items()},
                  {k: round(v, 3) for k, v in scores(c_model).items()}, flush=True)  # fmt: skip
    elapsed = time.perf_counter() - t0
    for method, c in pooled.items():
        print("pooled", method, scores(c))
    if args.out:
        lines = [
            "# Baselines on the labelled OSCD cities",
            "",
            "Change-vector analysis (CVA) on the 13 Sentinel-2 L1C bands "
            "(reflectance = DN / 10000, "
            "every band resampled to the 10 m B02 grid). Scores of the change class at the pixel "
            "level; *pooled* counts all pixels of all 10 cities together. No training is involved, "
            "so every labelled city is an evaluation city.",
            "",
            "Command:",
            "",
            "```bash",
            f".venv/bin/python benchmarks/cva_otsu_oscd.py {args.oscd} --out {args.out}",
            "```",
            "",
            f"Wall time: {elapsed:.0f} s on this machine (2 cores).",
            "",
            "| city | method | precision | recall | F1 | changed px | px |",
            "|---|---|---|---|---|---|---|",
            *[
                f"| {n} | {m} | {s['precision']:.3f} | {s['recall']:.3f} | {s['f1']:.3f} | "
                f"{pos} | {tot} |"
                for n, m, s, pos, tot in rows
            ],
            *[
                f"| **pooled** | {m} | {scores(c)['precision']:.3f} | {scores(c)['recall']:.3f} | "
                f"**{scores(c)['f1']:.3f}** | | |"
                for m, c in pooled.items()
            ],  # fmt: skip
            "",
            "*CVA + Otsu* thresholds each city at its own Otsu threshold; the *bundled CVA "
            "model* (swimdiff_geo/default_models/s2_change_cva.onnx) uses one global threshold and "
            "runs through the real engine (tiling, blending, nodata) at its default 0.5.",
            "",
        ]
        args.out.write_text("\n".join(lines))


if __name__ == "__main__":
    main()
