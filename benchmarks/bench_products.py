"""What reading Sentinel-2 products as downloaded costs against a stacked GeoTIFF.

One run on one machine: the sample pair (real Sentinel-2 pixels) mirrored up to ``--size`` px,
written three ways, each date:

- a 13-band GeoTIFF on the 10 m grid (tiled, DEFLATE), what the engine read before products;
- a SAFE product: one lossless JPEG 2000 per band at its native 10, 20 or 60 m (the layout of
  tests/sentinel2_safe.py), date B of processing baseline 05.09 (+1000, offset in the metadata);
- that product zipped (stored, as Copernicus Data Space serves it), read in place;
- the products written back as GeoTIFFs by ``stack_bands`` (``swimdiff-geo stack``), timed;
  and the peak RSS of a ``swimdiff-geo stack`` process at ``--memory-sizes`` (it must be flat).

For each: the time to read every band of both dates in the engine's 256-row strips (decoding,
the bilinear resampling of the coarse bands, the offset), and the time of a whole
``detect_change`` with the bundled model. Writes a table between markers in docs/inputs.md.

    python benchmarks/bench_products.py --size 2048 --out docs/inputs.md
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

import rasterio

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(REPO))
from bench_engine import command_peak_rss_mb, mirrored_raster  # noqa: E402
from doc_markers import replace_between  # noqa: E402

from swimdiff_geo.inference.change import ChangeOptions, ChangeOutputs, detect_change  # noqa: E402
from swimdiff_geo.inference.inputs import open_input  # noqa: E402
from swimdiff_geo.inference.io import Window  # noqa: E402
from swimdiff_geo.inference.io_rasterio import RasterioBackend  # noqa: E402
from swimdiff_geo.inference.stack import stack_bands  # noqa: E402
from tests.sentinel2_safe import write_jp2_rasterio, write_safe, zip_product  # noqa: E402

MARKER = "bench_products"


def _product(stack_path: Path, folder: Path, **kwargs) -> Path:
    with rasterio.open(stack_path) as ds:
        stack, transform, crs = ds.read(), ds.transform.to_gdal(), ds.crs.to_wkt()
    return write_safe(folder, stack, transform, crs, write_jp2_rasterio, **kwargs)


def read_all_s(paths: tuple[Path, Path]) -> float:
    """Seconds to read all bands of both inputs in 256-row strips, as the engine reads."""
    backend = RasterioBackend()
    t0 = time.perf_counter()
    for path in paths:
        source = open_input(backend, str(path))
        try:
            grid = source.grid
            for row in range(0, grid.height, 256):
                h = min(256, grid.height - row)
                source.read(Window(0, row, grid.width, h), range(1, source.count + 1))
        finally:
            source.close()
    return time.perf_counter() - t0


def detect_s(paths: tuple[Path, Path], out: Path) -> tuple[float, dict]:
    t0 = time.perf_counter()
    outputs = ChangeOutputs.in_dir(str(out), polygons=False)
    options = ChangeOptions(device="cpu", overwrite=True)
    summary = detect_change(str(paths[0]), str(paths[1]), outputs, options)
    return time.perf_counter() - t0, summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--pair", type=Path, default=REPO / "sample_data" / "s2_pair")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=None, help="e.g. docs/inputs.md")
    parser.add_argument(
        "--memory-sizes", type=int, nargs="*", default=[1024, 4096],
        help="sizes (px) at which the peak RSS of a `swimdiff-geo stack` process is measured",
    )  # fmt: skip
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp_name:
        tmp = Path(tmp_name)
        stacks = tuple(
            mirrored_raster(args.pair / f"s2_date_{d}.tif", tmp / f"stack_{d}.tif", args.size)
            for d in ("a", "b")
        )
        t0 = time.perf_counter()
        products = (
            _product(stacks[0], tmp / "a"),
            _product(stacks[1], tmp / "b", date="20180205", baseline="05.09"),
        )
        print(f"products written in {time.perf_counter() - t0:.0f} s", flush=True)
        t0 = time.perf_counter()
        restacked = tuple(tmp / f"restacked_{d}.tif" for d in ("a", "b"))
        for product, out in zip(products, restacked, strict=True):
            stack_bands(str(product), str(out))
        stack_wall = time.perf_counter() - t0
        print(f"swimdiff-geo stack of both products: {stack_wall:.1f} s", flush=True)
        inputs = {
            "13-band GeoTIFF (10 m grid)": stacks,
            "SAFE folders (JPEG 2000 per band)": products,
            "SAFE ZIPs (read in place)": (products[0], zip_product(products[1])),
            "the SAFE folders stacked by `swimdiff-geo stack` (COG)": restacked,
        }
        rows = []
        for name, paths in inputs.items():
            read = read_all_s(paths)
            wall, summary = detect_s(paths, tmp / f"out_{len(rows)}")
            grid = summary["engine"]["grid"]
            rows.append((name, read, wall, f"{grid['width']} x {grid['height']}"))
            print(name, f"read {read:.1f} s, detect-change {wall:.1f} s", flush=True)
        memory = []
        for size in args.memory_sizes:
            stack = mirrored_raster(args.pair / "s2_date_b.tif", tmp / f"mem_{size}.tif", size)
            product = _product(stack, tmp / f"mem_{size}", date="20180205", baseline="05.09")
            cmd = [sys.executable, "-m", "swimdiff_geo.cli.main", "stack", str(product),
                   str(tmp / f"mem_{size}_stack.tif"), "--quiet"]  # fmt: skip
            rss, wall = command_peak_rss_mb(cmd)
            memory.append((size, rss, wall))
            print(f"stack at {size} px: peak RSS {rss:.0f} MB, {wall:.1f} s", flush=True)
    base_read, base_wall = rows[0][1], rows[0][2]
    lines = [
        f"Measured with `python benchmarks/bench_products.py --size {args.size}` on "
        f"{platform.machine()}, the sample pair mirrored to {args.size} x {args.size} px; "
        "bundled change model, onnxruntime CPU. Read = every band of both dates in 256-row "
        "strips; date B of the products is of processing baseline 05.09 (offset removed). "
        f"`swimdiff-geo stack` of both SAFE folders took {stack_wall:.1f} s.",
        "",
        "| input | grid | read (s) | read vs GeoTIFF | detect-change (s) | vs GeoTIFF |",
        "|---|---|---|---|---|---|",
    ]
    for name, read, wall, grid in rows:
        lines.append(f"| {name} | {grid} | {read:.1f} | {read / base_read:.2f}x | {wall:.1f} | "
                     f"{wall / base_wall:.2f}x |")  # fmt: skip
    if memory:
        lines += [
            "",
            "Peak RSS of a whole `swimdiff-geo stack` process on one new-baseline product "
            "(13 bands, JPEG 2000) mirrored to each size:",
            "",
            "| product | peak RSS (MB) | wall (s) |",
            "|---|---|---|",
        ]
        lines += [f"| {size} x {size} px | {rss:.0f} | {wall:.1f} |" for size, rss, wall in memory]
    table = "\n".join(lines)
    print(table)
    if args.out:
        replace_between(args.out, f"<!-- {MARKER} -->", f"<!-- /{MARKER} -->", table)


if __name__ == "__main__":
    main()
