"""--extent against the whole image: does mapping an extent give the whole run's pixels?

Runs ``detect-change`` once over the whole pair, then over a square extent in its middle in two
ways, and compares each extent run's change probability with the same pixels of the whole run
(largest and mean absolute difference; pixels that change class at the model's threshold):

- the extent alone, the model run over the extent's pixels only (the engine until 2026-11-22);
- the extent run over the whole run's windows that touch it and one more on each side (the
  engine now: :func:`swimdiff_geo.inference.tiling.window_on_tile_lattice`), whose extra pixels
  are read and run but not written.

    python benchmarks/extent_context.py /path/to/oscd/.../mumbai/imgs_1 .../mumbai/imgs_2
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
from rasterio.windows import Window, from_bounds

import swimdiff_geo.inference.change as change
from swimdiff_geo.inference.change import ChangeOptions, ChangeOutputs, detect_change
from swimdiff_geo.inference.io import Window as EngineWindow


def extent_alone(window: EngineWindow, *_: int) -> tuple[EngineWindow, EngineWindow]:
    """The engine before 2026-11-22: the model sees the extent's pixels and nothing else."""
    return window, EngineWindow(0, 0, window.width, window.height)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("image_a")
    parser.add_argument("image_b")
    parser.add_argument("--size", type=int, default=300, help="extent side in pixels")
    args = parser.parse_args()
    lattice = change.window_on_tile_lattice
    with tempfile.TemporaryDirectory() as tmp:
        whole = ChangeOutputs.in_dir(str(Path(tmp) / "whole"), polygons=False)
        started = time.perf_counter()
        threshold = detect_change(args.image_a, args.image_b, whole)["threshold"]
        whole_s = time.perf_counter() - started
        with rasterio.open(whole.probability) as ds:
            side = min(args.size, ds.width, ds.height)
            window = Window((ds.width - side) // 2, (ds.height - side) // 2, side, side)
            extent = rasterio.windows.bounds(window, ds.transform)
            options = ChangeOptions(extent=extent, extent_crs=ds.crs.to_string())
            print(f"whole image {ds.width}x{ds.height} px ({whole_s:.1f} s); "
                  f"extent {side}x{side} px in its middle")  # fmt: skip
            print("| extent run | max abs difference | mean abs difference | pixels changing "
                  "class | time |")  # fmt: skip
            print("|---|---|---|---|---|")
            runs = (
                ("the extent alone (before)", extent_alone),
                ("on the whole run's windows (now)", lattice),
            )
            for name, grow in runs:
                change.window_on_tile_lattice = grow
                part = ChangeOutputs.in_dir(str(Path(tmp) / grow.__name__), False)
                started = time.perf_counter()
                detect_change(args.image_a, args.image_b, part, options)
                seconds = time.perf_counter() - started
                with rasterio.open(part.probability) as cut:
                    got = cut.read(1)
                    where = from_bounds(*cut.bounds, transform=ds.transform)
                    ref = ds.read(1, window=where.round_offsets().round_lengths())
                valid = (got >= 0) & (ref >= 0)
                diff = np.abs(got - ref)[valid]
                flips = int(((got >= threshold) != (ref >= threshold))[valid].sum())
                print(f"| {name} | {diff.max():.3g} | {diff.mean():.2g} | {flips} of "
                      f"{valid.sum()} | {seconds:.1f} s |")  # fmt: skip
    change.window_on_tile_lattice = lattice


if __name__ == "__main__":
    main()
