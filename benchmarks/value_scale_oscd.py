"""How the engine's units check (inference.inputs.value_scale_warning) sees real Sentinel-2
images: every OSCD city and date as digital numbers (must not warn), as reflectance 0-1 and as
an 8-bit rendering (0-3000 DN stretched to 0-255), against the bundled change model.

    python benchmarks/value_scale_oscd.py /path/to/shared/data/oscd

Prints one row per image: the typical band's ratio to the model's training means (whole-image
band medians; the check itself samples 9 windows of 64 px) and whether each version warns.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import numpy as np

from swimdiff_geo.data.oscd import OSCDCity, list_oscd_cities
from swimdiff_geo.inference.contract import load_model
from swimdiff_geo.inference.defaults import default_model_path
from swimdiff_geo.inference.inputs import typical_band_ratio, value_scale_warning
from swimdiff_geo.inference.io import Grid, Window


class ArraySource:
    """A :class:`RasterSource` over an in-memory ``(C, H, W)`` array, every pixel valid."""

    def __init__(self, path: str, pixels: np.ndarray) -> None:
        self.path, self.pixels = path, pixels
        self.grid = Grid(pixels.shape[2], pixels.shape[1])
        self.count = pixels.shape[0]

    def read(self, window: Window, bands: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        data = self.pixels[[b - 1 for b in bands], window.row_slice, window.col_slice]
        return data.astype(np.float32), np.ones(data.shape[1:], bool)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("oscd", help="the OSCD folder")
    args = parser.parse_args()
    contract = load_model(default_model_path("change_detection")).contract
    means = np.asarray(contract.standardization_mean)
    bands = list(range(1, len(contract.bands) + 1))
    versions = {
        "digital numbers": lambda x: x,
        "reflectance 0-1": lambda x: x / 10000.0,
        "8-bit rendering": lambda x: np.clip(x / 3000.0 * 255.0, 0, 255).round(),
    }
    print("| image | typical band / training mean | " + " | ".join(versions) + " |")
    print("|---" * (len(versions) + 2) + "|")
    ratios, warned = [], {name: 0 for name in versions}
    for city in list_oscd_cities(args.oscd):
        for date in (1, 2):
            pixels = OSCDCity(args.oscd, city).read(date)
            medians = np.median(pixels.reshape(len(bands), -1), axis=1) * contract.input_scale
            ratio, _ = typical_band_ratio(medians, means)
            ratios.append(ratio)
            cells = []
            for name, convert in versions.items():
                warning = value_scale_warning(ArraySource(city, convert(pixels)), bands, contract)
                warned[name] += warning is not None
                cells.append("warns" if warning else "-")
            print(f"| {city} date {date} | {ratio:.2f} | " + " | ".join(cells) + " |")
    print(
        f"\n{len(ratios)} images; typical band / training mean {min(ratios):.2f} to "
        f"{max(ratios):.2f}; warnings: " + ", ".join(f"{k} {v}" for k, v in warned.items())
    )


if __name__ == "__main__":
    main()
