"""Sensor band specifications: band names in model input order and the default scaling.

A :class:`BandSpec` is what the model metadata records (``bands``, ``input_scale``,
``standardization_mean/std``), so a model trained on one spec tells the engine how to read rasters.
Pure Python: importable from the torch-free engine and from QGIS.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field


@dataclass(frozen=True)
class BandSpec:
    """Band names in input order and how raw digital numbers are scaled.

    ``input_scale`` multiplies raw DNs first; ``mean``/``std`` (per band, after scaling) are
    optional standardisation. ``resolution_m`` is the nominal ground sampling distance.
    """

    name: str
    bands: tuple[str, ...]
    input_scale: float = 1.0
    mean: tuple[float, ...] = field(default_factory=tuple)
    std: tuple[float, ...] = field(default_factory=tuple)
    resolution_m: float | None = None

    def subset(self, names: list[str] | tuple[str, ...]) -> BandSpec:
        """The spec restricted to ``names`` (in that order)."""
        idx = [self.bands.index(n) for n in names]
        return BandSpec(
            name=f"{self.name}[{','.join(names)}]",
            bands=tuple(names),
            input_scale=self.input_scale,
            mean=tuple(self.mean[i] for i in idx) if self.mean else (),
            std=tuple(self.std[i] for i in idx) if self.std else (),
            resolution_m=self.resolution_m,
        )


def normalize_band_name(name: str) -> str:
    """``"B1"``/``"b01"``/``"B8a"`` -> ``"B01"``/``"B01"``/``"B8A"``; other names upper-cased.

    Sentinel-2 files name their bands both ways (ESA's B01 ... B12, Earth Engine's B1 ... B12):
    training data and the engine's band matching compare names through this.
    """
    m = re.fullmatch(r"[Bb]0*(\d{1,2})([Aa]?)", name.strip())
    if not m:
        return name.strip().upper()
    if m.group(2):  # the only lettered Sentinel-2 band is B8A, never zero-padded
        return f"B{int(m.group(1))}{m.group(2).upper()}"
    return f"B{int(m.group(1)):02d}"


# Sentinel-2 L1C, the 13 bands in the order of the method page (SSL4EO-S12 / TorchGeo):
# digital numbers / 10000 = top-of-atmosphere reflectance.
SENTINEL2_L1C = BandSpec(
    name="sentinel2_l1c",
    bands=(
        "B01",
        "B02",
        "B03",
        "B04",
        "B05",
        "B06",
        "B07",
        "B08",
        "B8A",
        "B09",
        "B10",
        "B11",
        "B12",
    ),
    input_scale=1e-4,
    resolution_m=10.0,
)

# Native resolution (m) of each Sentinel-2 band: what OSCD-style per-band files are resampled from.
SENTINEL2_NATIVE_RESOLUTION_M = {
    "B01": 60, "B02": 10, "B03": 10, "B04": 10, "B05": 20, "B06": 20, "B07": 20,
    "B08": 10, "B8A": 20, "B09": 60, "B10": 60, "B11": 20, "B12": 20,
}  # fmt: skip

# The Pucallpa Landsat composites in sample_data: 4 uint8 bands (already stretched).
LANDSAT_SWIR1_NIR_RED_GREEN_U8 = BandSpec(
    name="landsat_swir1_nir_red_green_u8",
    bands=("SWIR1", "NIR", "RED", "GREEN"),
    input_scale=1.0 / 255.0,
    resolution_m=30.0,
)

# NAIP aerial imagery, 8-bit R, G, B, NIR.
NAIP_RGBN = BandSpec(
    name="naip_rgbn",
    bands=("RED", "GREEN", "BLUE", "NIR"),
    input_scale=1.0 / 255.0,
    resolution_m=1.0,
)

BAND_SPECS = {s.name: s for s in (SENTINEL2_L1C, LANDSAT_SWIR1_NIR_RED_GREEN_U8, NAIP_RGBN)}


def get_band_spec(name: str) -> BandSpec:
    """Look up a registered spec by name (KeyError lists the known names)."""
    try:
        return BAND_SPECS[name]
    except KeyError:
        raise KeyError(f"unknown band spec {name!r}; known: {', '.join(BAND_SPECS)}") from None
