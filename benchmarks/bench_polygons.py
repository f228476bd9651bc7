"""Peak memory and time of a raster backend's polygon writing (``write_polygons``).

Labels the regions of a change mask (1 = change) into a scratch label raster, then writes their
polygons with the chosen backend of each given checkout, each in a fresh process, and prints
the peak RSS and wall time. The CLI's rasterio backend (the project's virtual environment):

    .venv/bin/python benchmarks/bench_polygons.py rasterio /tmp/bench3/scene/change_mask.tif \\
        --repos /path/to/old/checkout .

the QGIS backend, with QGIS's Python (it needs osgeo):

    /usr/bin/python3 benchmarks/bench_polygons.py gdal /tmp/bench3/scene/change_mask.tif \\
        --repos /path/to/old/checkout .

(the mask of a whole-tile run of benchmarks/bench_engine.py: 664,042 regions). ``--as-classes``
polygonises the mask as a two-class map (no change and change, as map-landcover's polygons do):
then one region, the unchanged background, spans the whole scene. ``--min-area M2`` (with
``--as-classes``) applies map-landcover's minimum mapping unit first: regions under M2 join
their neighbour; the labelling's own peak and time are printed too.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

BACKENDS = {"rasterio": "io_rasterio.RasterioBackend", "gdal": "io_gdal.GdalBackend"}

WRITE = """
import importlib, sys, time
sys.path.insert(0, sys.argv[1])
import numpy as np
from swimdiff_geo.inference.io import PolygonLayer
module, name = sys.argv[2].split(".")
backend = getattr(importlib.import_module("swimdiff_geo.inference." + module), name)()
labels, n, out = sys.argv[3], int(sys.argv[4]), sys.argv[5]
source = backend.open(labels)
grid = source.grid
source.close()
layer = PolygonLayer(labels, grid, {"region_id": np.arange(n + 1)}, {"region_id": "int"}, "p")
t = time.perf_counter()
backend.write_polygons(out, layer)
# VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent through fork and exec.
peak = [line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM")][0]
print(int(peak) / 1024, time.perf_counter() - t)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("backend", choices=sorted(BACKENDS))
    parser.add_argument("mask", type=Path, help="a change mask GeoTIFF (1 = change)")
    parser.add_argument("--repos", type=Path, nargs="+", default=[REPO])
    parser.add_argument("--as-classes", action="store_true", help="no change is a region too")
    parser.add_argument(
        "--min-area",
        type=float,
        default=0.0,
        help="m^2: merge smaller regions into their neighbour (needs --as-classes)",
    )
    args = parser.parse_args()
    if args.min_area and not args.as_classes:
        parser.error("--min-area merges regions of a class map: add --as-classes")
    sys.path.insert(0, str(REPO))
    import importlib

    from swimdiff_geo.inference.io import RasterSpec, Window
    from swimdiff_geo.inference.regions import label_scene_regions

    module, name = BACKENDS[args.backend].split(".")
    backend = getattr(importlib.import_module(f"swimdiff_geo.inference.{module}"), name)()
    with tempfile.TemporaryDirectory() as tmp:
        mask = backend.open(str(args.mask))
        grid = mask.grid
        spec = RasterSpec(grid, 1, "int32", 0)
        provisional = backend.create(f"{tmp}/provisional.tif", spec)
        labels = backend.create(f"{tmp}/labels.tif", spec)

        def keys(window: Window):
            change = mask.read(window, [1])[0][0] == 1
            return change + 1 if args.as_classes else change

        started = time.perf_counter()
        regions = label_scene_regions(
            keys, grid, backend.crs_info(grid.crs_wkt), args.min_area, provisional, labels,
            small_regions="merge" if args.min_area else "drop",
        )  # fmt: skip
        took = time.perf_counter() - started
        provisional.close()
        labels.close()
        mask.close()
        peak = [line.split()[1] for line in open("/proc/self/status") if "VmHWM" in line][0]
        print(f"{regions.count} regions; labelling: peak RSS {int(peak) / 1024:.0f} MB, "
              f"{took:.0f} s", flush=True)  # fmt: skip
        for k, repo in enumerate(args.repos):
            out = subprocess.run(
                [sys.executable, "-c", WRITE, str(repo.resolve()), BACKENDS[args.backend],
                 f"{tmp}/labels.tif",
                 str(regions.count), f"{tmp}/polygons{k}.gpkg"],
                capture_output=True, text=True, check=True,
            ).stdout.split()  # fmt: skip
            print(f"{repo}: peak RSS {float(out[0]):.0f} MB, {float(out[1]):.0f} s", flush=True)


if __name__ == "__main__":
    main()
