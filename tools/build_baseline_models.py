"""Build the bundled baseline models (no learning, no torch) into swimdiff_geo/default_models/.

    python tools/build_baseline_models.py --oscd /path/to/shared/data/oscd

- ``s2_change_cva.onnx``: change-vector analysis on the 13 Sentinel-2 L1C bands,
  ``p = sigmoid(k * (||x_b - x_a||_2 - c))`` on reflectances (DN / 10000). ``c`` is the Otsu
  threshold of the CVA magnitude pooled over all 24 OSCD cities (images only: no label is used),
  ``k = ln(19) / (c / 2)`` so that p = 0.5 at c and 0.95 at 1.5 c.
- ``landsat_landcover_rules.onnx``: water / vegetation / bare-or-built from NDWI and NDVI on the
  4-band SWIR1, NIR, RED, GREEN uint8 Landsat composites, as softmax of scaled index scores.

Both follow docs/model-format.md (docs/models.md). The CVA model is the classical baseline beside
the trained default ``s2_change_swimdiff``; the rules model is the Landsat default, since no
trained Landsat head has earned its place.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from swimdiff_geo.bands import SENTINEL2_L1C
from swimdiff_geo.inference.contract import ModelContract

OUT = Path(__file__).resolve().parent.parent / "swimdiff_geo" / "default_models"
OPSET = 18


def _save(nodes, inputs, outputs, inits, contract: ModelContract, path: Path) -> None:
    graph = helper.make_graph(nodes, contract.name, inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    model.producer_name = "swimdiff-geo tools/build_baseline_models.py"
    for key, value in contract.to_metadata().items():
        model.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    print(f"{path}: {path.stat().st_size} bytes")


def _scalar(name: str, value: float) -> onnx.TensorProto:
    return helper.make_tensor(name, TensorProto.FLOAT, [], [value])


def otsu(values: np.ndarray, bins: int = 512) -> float:
    """Otsu's threshold of a 1-D sample (maximises between-class variance)."""
    hist, edges = np.histogram(values, bins=bins)
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centres) / np.maximum(w0, 1)
    m1 = (np.sum(hist * centres) - np.cumsum(hist * centres)) / np.maximum(w1, 1)
    return float(centres[np.argmax(w0 * w1 * (m0 - m1) ** 2)])


def cva_threshold(oscd_root: Path, sample_per_city: int = 200_000) -> float:
    """Otsu threshold of CVA magnitudes (reflectance units) pooled over every OSCD city."""
    from swimdiff_geo.data.oscd import OSCDCity, find_oscd_root, list_oscd_cities

    root = find_oscd_root(oscd_root)
    rng = np.random.default_rng(0)
    pooled = []
    for name in list_oscd_cities(root):
        city = OSCDCity(root, name)
        a, b = city.read(date=1) * 1e-4, city.read(date=2) * 1e-4
        valid = np.any(a != 0, axis=0) & np.any(b != 0, axis=0)
        magnitude = np.sqrt(((b - a) ** 2).sum(axis=0))[valid]
        pooled.append(rng.choice(magnitude, min(sample_per_city, magnitude.size), replace=False))
    return otsu(np.concatenate(pooled))


def build_cva(path: Path, threshold: float) -> None:
    c = len(SENTINEL2_L1C.bands)
    gain = math.log(19.0) / (threshold / 2)
    contract = ModelContract(
        model_type="change_detection", bands=list(SENTINEL2_L1C.bands), num_dates=2,
        tile_size=256, tiles_overlap=25.0, resolution=1000.0, input_scale=1e-4, threshold=0.5,
        class_names={"0": "no change", "1": "change"}, nodata_policy="declared_or_zero",
        name="Sentinel-2 change-vector-analysis baseline",
        description=(
            "Not a learned model: p = sigmoid(k (||x_b - x_a|| - c)) on TOA reflectance, "
            f"c = {threshold:.4f} (Otsu over the CVA magnitudes of all OSCD cities), "
            f"k = {gain:.2f}. The classical baseline; the default change model is "
            "s2_change_swimdiff."
        ),
        extra={"cva_threshold": threshold, "cva_gain": gain},
    )  # fmt: skip
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2 * c, "H", "W"])
    y = helper.make_tensor_value_info("probability", TensorProto.FLOAT, ["N", 1, "H", "W"])
    inits = [
        helper.make_tensor("split", TensorProto.INT64, [2], [c, c]),
        helper.make_tensor("axes", TensorProto.INT64, [1], [1]),
        _scalar("c", threshold), _scalar("k", gain),
    ]  # fmt: skip
    nodes = [
        helper.make_node("Split", ["x", "split"], ["a", "b"], axis=1),
        helper.make_node("Sub", ["b", "a"], ["d"]),
        helper.make_node("Mul", ["d", "d"], ["d2"]),
        helper.make_node("ReduceSum", ["d2", "axes"], ["s"], keepdims=1),
        helper.make_node("Sqrt", ["s"], ["magnitude"]),
        helper.make_node("Sub", ["magnitude", "c"], ["m0"]),
        helper.make_node("Mul", ["m0", "k"], ["z"]),
        helper.make_node("Sigmoid", ["z"], ["probability"]),
    ]
    _save(nodes, [x], [y], inits, contract, path)


LANDCOVER_CLASSES = {"0": "water", "1": "vegetation", "2": "bare or built"}
LANDCOVER_COLORS = {"0": "#2b83ba", "1": "#1a9641", "2": "#d7b56d"}


def build_landcover(path: Path) -> None:
    """softmax([8 * NDWI, 8 * (NDVI - 0.25), 0]) per pixel; bands SWIR1, NIR, RED, GREEN."""
    contract = ModelContract(
        model_type="segmentation", bands=["SWIR1", "NIR", "RED", "GREEN"], num_dates=1,
        tile_size=256, tiles_overlap=10.0, resolution=3000.0, input_scale=1 / 255,
        class_names=LANDCOVER_CLASSES, class_colors=LANDCOVER_COLORS,
        name="Landsat land-cover index-rule baseline",
        description=(
            "Not a learned model: water / vegetation / bare-or-built from NDWI (green, NIR) and "
            "NDVI (NIR, red) as softmax([8 NDWI, 8 (NDVI - 0.25), 0]). For stretched 8-bit "
            "composites like the Pucallpa sample, not raw Landsat digital numbers "
            "(docs/models.md)."
        ),
    )  # fmt: skip
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, "H", "W"])
    y = helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 3, "H", "W"])
    inits = [
        helper.make_tensor("split", TensorProto.INT64, [4], [1, 1, 1, 1]),
        _scalar("eps", 1e-6), _scalar("gain", 8.0), _scalar("veg_offset", 0.25),
        _scalar("zero", 0.0),
    ]  # fmt: skip
    nodes = [
        helper.make_node("Split", ["x", "split"], ["swir1", "nir", "red", "green"], axis=1),
        # NDVI = (NIR - RED) / (NIR + RED)
        helper.make_node("Sub", ["nir", "red"], ["v_num"]),
        helper.make_node("Add", ["nir", "red"], ["v_den0"]),
        helper.make_node("Add", ["v_den0", "eps"], ["v_den"]),
        helper.make_node("Div", ["v_num", "v_den"], ["ndvi"]),
        # NDWI = (GREEN - NIR) / (GREEN + NIR)
        helper.make_node("Sub", ["green", "nir"], ["w_num"]),
        helper.make_node("Add", ["green", "nir"], ["w_den0"]),
        helper.make_node("Add", ["w_den0", "eps"], ["w_den"]),
        helper.make_node("Div", ["w_num", "w_den"], ["ndwi"]),
        helper.make_node("Mul", ["ndwi", "gain"], ["z_water"]),
        helper.make_node("Sub", ["ndvi", "veg_offset"], ["v0"]),
        helper.make_node("Mul", ["v0", "gain"], ["z_veg"]),
        helper.make_node("Mul", ["swir1", "zero"], ["z_bare"]),
        helper.make_node("Concat", ["z_water", "z_veg", "z_bare"], ["z"], axis=1),
        helper.make_node("Softmax", ["z"], ["probabilities"], axis=1),
    ]
    _save(nodes, [x], [y], inits, contract, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--oscd", type=Path, required=True, help="the OSCD folder (images only used)"
    )
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    threshold = cva_threshold(args.oscd)
    print(f"CVA Otsu threshold over all OSCD cities: {threshold:.5f} (reflectance units)")
    build_cva(OUT / "s2_change_cva.onnx", threshold)
    build_landcover(OUT / "landsat_landcover_rules.onnx")


if __name__ == "__main__":
    main()
