"""Peak memory and time of the QGIS backend's polygon writing (GdalBackend.write_polygons).

Labels the regions of a change mask (1 = change) into a scratch label raster, then writes their
polygons with the GDAL backend of each given checkout, each in a fresh process, and prints the
peak RSS and wall time. Runs with QGIS's Python (it needs osgeo):

    /usr/bin/python3 benchmarks/bench_gdal_polygons.py /tmp/bench3/scene/change_mask.tif \\
        --repos /path/to/old/checkout .

(the mask of a whole-tile run of benchmarks/bench_engine.py: 664,042 regions).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

WRITE = """
import sys, time
sys.path.insert(0, sys.argv[1])
import numpy as np
from osgeo import gdal
from swimdiff_geo.inference.io import Grid, PolygonLayer
from swimdiff_geo.inference.io_gdal import GdalBackend
labels, n, out = sys.argv[2], int(sys.argv[3]), sys.argv[4]
ds = gdal.Open(labels)
grid = Grid(ds.RasterXSize, ds.RasterYSize, ds.GetGeoTransform(), ds.GetProjection())
ds = None
layer = PolygonLayer(labels, grid, {"region_id": np.arange(n + 1)}, {"region_id": "int"}, "p")
t = time.perf_counter()
GdalBackend().write_polygons(out, layer)
# VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent through fork and exec.
peak = [line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM")][0]
print(int(peak) / 1024, time.perf_counter() - t)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mask", type=Path, help="a change mask GeoTIFF (1 = change)")
    parser.add_argument("--repos", type=Path, nargs="+", default=[REPO])
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    from swimdiff_geo.inference.io import RasterSpec, Window
    from swimdiff_geo.inference.io_gdal import GdalBackend
    from swimdiff_geo.inference.regions import label_scene_regions

    backend = GdalBackend()
    with tempfile.TemporaryDirectory() as tmp:
        mask = backend.open(str(args.mask))
        grid = mask.grid
        spec = RasterSpec(grid, 1, "int32", 0)
        provisional = backend.create(f"{tmp}/provisional.tif", spec)
        labels = backend.create(f"{tmp}/labels.tif", spec)

        def keys(window: Window):
            return mask.read(window, [1])[0][0] == 1

        regions = label_scene_regions(
            keys, grid, backend.crs_info(grid.crs_wkt), 0.0, provisional, labels
        )
        provisional.close()
        labels.close()
        mask.close()
        print(f"{regions.count} regions", flush=True)
        for k, repo in enumerate(args.repos):
            out = subprocess.run(
                [sys.executable, "-c", WRITE, str(repo.resolve()), f"{tmp}/labels.tif",
                 str(regions.count), f"{tmp}/polygons{k}.gpkg"],
                capture_output=True, text=True, check=True,
            ).stdout.split()  # fmt: skip
            print(f"{repo}: peak RSS {float(out[0]):.0f} MB, {float(out[1]):.0f} s", flush=True)


if __name__ == "__main__":
    main()
