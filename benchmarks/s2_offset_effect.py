"""What the +1000 of Sentinel-2 processing baseline 04.00 does to the bundled change model when
a product is stacked by hand, without the metadata that records it.

Since 25 January 2022 ESA adds 1000 to every L1C digital number (``RADIO_ADD_OFFSET = -1000``
in ``MTD_MSIL1C.xml``). The engine removes it when it reads the product (SAFE folder or ZIP,
swimdiff_geo.inference.band_files); a GeoTIFF stacked from the band files carries no such
record. This scores the bundled change model on labelled OSCD cities (2015-2018, before the
offset) three ways: as distributed; date B + 1000 (an old image against a new product stacked
by hand); both dates + 1000 (two new products stacked by hand).

    python benchmarks/s2_offset_effect.py /path/to/shared/data/oscd \\
        [--cities bordeaux,mumbai,saclay_e]

Prints a Markdown table (precision / recall / F1 of the change class per city and pooled).
``--b10`` prints instead the B10 (cirrus) median of every OSCD image, the basis of the engine's
warning for hand-stacked new products (swimdiff_geo.inference.inputs.new_baseline_warning).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import rasterio

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cva_otsu_oscd import (  # noqa: E402
    changed_pixels,
    counts,
    run_detect_change,
    score_cell,
    scores,
    write_stacks,
)

from swimdiff_geo.data.oscd import OSCDCity, find_oscd_root, list_oscd_cities  # noqa: E402

NEW_BASELINE_OFFSET = 1000
VARIANTS = {
    "as distributed": (0, 0),
    "date B + 1000 (stacked by hand)": (0, NEW_BASELINE_OFFSET),
    "both dates + 1000 (stacked by hand)": (NEW_BASELINE_OFFSET, NEW_BASELINE_OFFSET),
}


def _shifted(path: Path, offset: int) -> Path:
    """``path`` with ``offset`` added to every valid (non-zero) digital number."""
    if not offset:
        return path
    out = path.with_name(f"{path.stem}_plus{offset}.tif")
    with rasterio.open(path) as src:
        data, profile = src.read(), src.profile
        descriptions = src.descriptions
    with rasterio.open(out, "w", **profile) as dst:
        dst.write(np.where(data > 0, data.astype(np.int64) + offset, 0).astype(data.dtype))
        dst.descriptions = descriptions
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("oscd", type=Path)
    parser.add_argument("--cities", default="bordeaux,mumbai,saclay_e")
    parser.add_argument("--b10", action="store_true", help="B10 medians of every OSCD image")
    args = parser.parse_args()
    root = find_oscd_root(args.oscd)
    if args.b10:
        medians = []
        for name in list_oscd_cities(root):
            city = OSCDCity(root, name)
            for date in (1, 2):
                b10 = city.read(date=date)[city.bands.index("B10")]
                medians.append(float(np.median(b10[b10 > 0])))
        low, high = min(medians), max(medians)
        shift = NEW_BASELINE_OFFSET
        print(f"B10 median of {len(medians)} OSCD images: {low:.0f} to {high:.0f} (+1000 as a "
              f"new product stacked by hand: {low + shift:.0f} to {high + shift:.0f})")  # fmt: skip
        return
    cities = args.cities.split(",")
    results: dict[str, dict[str, np.ndarray]] = {v: {} for v in VARIANTS}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        for name in cities:
            city = OSCDCity(root, name)
            truth = city.read_labels().astype(bool)
            stacks = write_stacks(city, tmp)
            for variant, (offset_a, offset_b) in VARIANTS.items():
                a, b = _shifted(stacks[0], offset_a), _shifted(stacks[1], offset_b)
                outputs = run_detect_change(a, b, None, tmp / f"{name}_{offset_a}_{offset_b}")
                results[variant][name] = counts(changed_pixels(outputs), truth)
            print(name, "done", flush=True)
    header = " | ".join(cities)
    print(f"| input | {header} | **pooled** |")
    print("|---|" + "---|" * (len(cities) + 1))
    for variant, by_city in results.items():
        cells = [score_cell(scores(c)) for c in by_city.values()]
        cells.append(f"**{score_cell(scores(sum(by_city.values())))}**")
        print(f"| {variant} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
