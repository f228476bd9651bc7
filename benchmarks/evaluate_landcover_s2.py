"""Score a 13-band Sentinel-2 land-cover model on held-out blocks and on an independent site.

    python benchmarks/evaluate_landcover_s2.py \\
        --model swimdiff_geo/default_models/s2_landcover_swimdiff.onnx \\
        --slovenia /path/to/shared/data/eolearn_slovenia_s2_lulc \\
        --aberystwyth /path/to/shared/data/rsgislib_aberystwyth_s2

1. eo-learn Slovenia (the training site): the model runs through the engine on each clear scene
   (2, 3, 4; training used scene 2) and is scored on the spatial blocks held out from training
   (the same ``spatial_block_split`` as ``finetune landcover``: --block-size, --val-fraction,
   --seed, --block-buffer), per class.
2. RSGISLib Aberystwyth (Wales; never seen in training): scored on the hand-drawn polygons that
   fall inside the image subset. That image is Level-2A surface reflectance x 1000 with 10 bands,
   so the model sees an out-of-domain input: reflectance = value / 1000, and the three missing
   L1C bands are stand-ins (B01 := B02, B09 := B8A, B10 := 0). Polygon classes map to the
   model's: Forest -> forest, Urban -> artificial surface; Water has no training class (the
   Slovenian valley has none), so its row shows what the model calls water instead.

Prints Markdown tables. Data are read from the given folders, never copied.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import fiona
import numpy as np
import rasterio
from rasterio.features import rasterize

from swimdiff_geo.bands import SENTINEL2_L1C
from swimdiff_geo.data.landcover import read_training_labels, spatial_block_split
from swimdiff_geo.inference.contract import ModelContract, load_model
from swimdiff_geo.inference.landcover import LandcoverOptions, LandcoverOutputs, map_landcover

S2_ORDER = list(SENTINEL2_L1C.bands)  # the 13 L1C bands in the method page's order
ABER_BANDS = ["B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12"]
ABER_CLASSES = {"cls_forest_smpls": "forest", "cls_urban_smpls": "artificial surface",
                "cls_water_smpls": None, "cls_grass_smpls": "grassland"}  # fmt: skip


def class_map(options: LandcoverOptions, image: Path, tmp: Path) -> np.ndarray:
    """The engine's class map (class ids, 255 = nodata) of ``image``."""
    out = LandcoverOutputs.in_dir(str(tmp / image.stem))
    map_landcover(str(image), out, options)
    with rasterio.open(out.landcover) as src:
        return src.read(1)


def per_class(pred: np.ndarray, truth: np.ndarray, names: list[str]) -> list[dict]:
    """Precision / recall / F1 per class over the pixels where ``truth`` is a class id."""
    rows = []
    valid = truth < len(names)
    for k, name in enumerate(names):
        t, p = (truth == k) & valid, (pred == k) & valid
        tp, fp, fn = int((t & p).sum()), int((~t & p).sum()), int((t & ~p).sum())
        prec = tp / (tp + fp) if tp + fp else float("nan")
        rec = tp / (tp + fn) if tp + fn else float("nan")
        f1 = 2 * prec * rec / (prec + rec) if tp else (0.0 if tp + fn else float("nan"))
        rows.append({"class": name, "px": int(t.sum()), "precision": prec, "recall": rec, "f1": f1})
    return rows


def model_input(reflectance: np.ndarray, profile: dict, input_scale: float, path: Path) -> Path:
    """Write 13-band ``reflectance`` as the model's raw input: float reflectance for
    ``input_scale`` 1, else integers ``reflectance / input_scale`` (e.g. L1C DN for 1e-4)."""
    if input_scale == 1:
        data, dtype = reflectance.astype(np.float32), "float32"
    else:
        data, dtype = (
            np.clip(np.round(reflectance / input_scale), 0, 65535).astype(np.uint16),
            "uint16",
        )
    profile = profile | {"count": 13, "dtype": dtype, "nodata": None, "driver": "GTiff"}
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
        dst.descriptions = tuple(S2_ORDER)
    return path


def slovenia(
    options: LandcoverOptions, contract: ModelContract, root: Path, args: argparse.Namespace,
    tmp: Path,
) -> str:  # fmt: skip
    names = [contract.class_names[str(i)] for i in range(contract.num_classes)]
    scene = root / "derived_reference_scene_2_s2l1c_13band.tif"
    labelled = read_training_labels(root / "LULC_polygons.gpkg", scene, "LULC_NAME", None, names)
    _, val = spatial_block_split(
        labelled.labels, args.block_size, args.val_fraction, args.seed, args.block_buffer
    )
    lines = []
    for i in (2, 3, 4):
        with rasterio.open(root / f"derived_reference_scene_{i}_s2l1c_13band.tif") as src:
            image = model_input(src.read(), src.profile, contract.input_scale, tmp / f"sl{i}.tif")
        pred = class_map(options, image, tmp)
        rows = per_class(pred, val, names)
        accuracy = float((pred == val)[val < len(names)].mean())
        f1s = [r["f1"] for r in rows if r["px"]]
        lines.append(
            f"\nScene {i}{' (training scene)' if i == 2 else ''}: overall accuracy "
            f"{accuracy:.3f}, macro F1 over classes present {np.mean(f1s):.3f}\n"
        )
        lines += ["| class | held-out px | precision | recall | F1 |", "|---|---|---|---|---|"]
        lines += [f"| {r['class']} | {r['px']} | {r['precision']:.3f} | {r['recall']:.3f} | "
                  f"{r['f1']:.3f} |" for r in rows]  # fmt: skip
    return "\n".join(lines)


def aberystwyth_13band(root: Path, input_scale: float, path: Path) -> Path:
    """The subset as the model's 13 L1C bands (see module doc)."""
    with rasterio.open(root / "sen2_20210527_aber_subset.tif") as src:
        data = src.read().astype(np.float32) / 1000.0
        profile = src.profile
    bands = dict(zip(ABER_BANDS, data, strict=True))
    bands["B01"], bands["B09"], bands["B10"] = bands["B02"], bands["B8A"], np.zeros_like(data[0])
    return model_input(np.stack([bands[b] for b in S2_ORDER]), profile, input_scale, path)


def aberystwyth(options: LandcoverOptions, contract: ModelContract, root: Path, tmp: Path) -> str:
    names = {int(k): v for k, v in contract.class_names.items()}
    image = aberystwyth_13band(root, contract.input_scale, tmp / "aber13.tif")
    pred = class_map(options, image, tmp)
    with rasterio.open(image) as src:
        shape, transform = (src.height, src.width), src.transform
    lines = ["| polygons (hand-drawn) | px in the subset | model class | share predicted as it | "
             "predicted classes |", "|---|---|---|---|---|"]  # fmt: skip
    for layer, target in ABER_CLASSES.items():
        with fiona.open(root / "cls_poly_smpls.gpkg", layer=layer) as features:
            shapes = [(f.geometry, 1) for f in features]
        mask = rasterize(shapes, out_shape=shape, transform=transform, fill=0).astype(bool)
        if not mask.any():
            lines.append(f"| {layer} | 0 | {target} | - | - |")
            continue
        values, n = np.unique(pred[mask], return_counts=True)
        spread = ", ".join(
            f"{names.get(int(v), v)} {c / mask.sum():.0%}"
            for v, c in sorted(zip(values, n, strict=True), key=lambda t: -t[1])
        )
        ids = [k for k, v in names.items() if v == target]
        share = f"{float(np.isin(pred[mask], ids).mean()):.3f}" if ids else "no such class"
        lines.append(f"| {layer} | {int(mask.sum())} | {target} | {share} | {spread} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--slovenia", type=Path, required=True)
    parser.add_argument("--aberystwyth", type=Path, default=None)
    parser.add_argument("--block-size", type=int, default=20)
    parser.add_argument("--val-fraction", type=float, default=0.3)
    parser.add_argument("--block-buffer", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tile-size", type=int, default=None, help="default: the model's")
    args = parser.parse_args()
    contract = load_model(args.model).contract
    options = LandcoverOptions(
        model=args.model, device="cpu", tile_size=args.tile_size, overwrite=True
    )
    with tempfile.TemporaryDirectory() as tmp:
        print("## eo-learn Slovenia, held-out blocks")
        print(slovenia(options, contract, args.slovenia, args, Path(tmp)))
        if args.aberystwyth:
            print("\n## Aberystwyth (independent site, out-of-domain input)\n")
            print(aberystwyth(options, contract, args.aberystwyth, Path(tmp)))


if __name__ == "__main__":
    main()
