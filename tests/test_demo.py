"""The demo (`make demo`) and its quicklooks, end to end on the bundled models and sample data."""

from __future__ import annotations

import json

import numpy as np
import rasterio
from rasterio.enums import Resampling

from swimdiff_geo.demo import run_demo
from swimdiff_geo.quicklook import stretch


def test_demo_writes_both_jobs_and_quicklooks(tmp_path):
    paths = run_demo(tmp_path / "demo")
    change_dir, landcover_dir = paths["change_dir"], paths["landcover_dir"]
    for name in ("change_probability.tif", "change_mask.tif", "change_polygons.gpkg",
                 "summary.json", "quicklook.png"):  # fmt: skip
        assert (change_dir / name).is_file(), name
    for name in ("landcover.tif", "class_areas.csv", "landcover.gpkg", "quicklook.png"):
        assert (landcover_dir / name).is_file(), name
    summary = json.loads((change_dir / "summary.json").read_text())
    assert summary["model"]["path"].endswith("s2_change_swimdiff.onnx")  # the bundled default
    assert 0 < summary["pixels"]["changed"] < summary["pixels"]["valid"]

    with rasterio.open(paths["change_quicklook"]) as png, rasterio.open(
        change_dir / "change_mask.tif"
    ) as mask:  # fmt: skip
        assert png.driver == "PNG" and png.count == 3
        # three panels of the raster's size side by side
        assert png.height == mask.height and png.width == 3 * mask.width + 2 * 4
        overlay = png.read()[:, :, 2 * (mask.width + 4) :]
        changed = mask.read(1) == 1
    # changed pixels are tinted red in the overlay panel, unchanged ones are not
    red_excess = overlay[0].astype(int) - overlay[1:].astype(int).mean(axis=0)
    assert red_excess[changed].mean() > red_excess[~changed].mean() + 60

    with rasterio.open(paths["landcover_quicklook"]) as png:
        picture = png.read()
    panel_width = (picture.shape[2] - 4) // 2  # image | gap | class map
    assert max(picture.shape[1], panel_width) <= 600  # decimated to the quicklook size
    with rasterio.open(landcover_dir / "landcover.tif") as lc:
        classes = lc.read(1, out_shape=(picture.shape[1], panel_width),
                          resampling=Resampling.nearest)  # fmt: skip
        colors = lc.colormap(1)
    panel = picture[:, :, -panel_width:]
    # class panel pixels are exactly the model's class colours
    for class_id in (0, 1, 2):
        where = classes == class_id
        assert where.any()
        np.testing.assert_array_equal(panel[:, where].T,
                                      np.tile(colors[class_id][:3], (where.sum(), 1)))  # fmt: skip


def test_stretch_maps_percentiles_to_full_range():
    data = np.arange(1, 1001, dtype=np.float32).reshape(1, 10, 100)
    out = stretch(data)
    assert out.dtype == np.uint8 and out.min() == 0 and out.max() == 255
