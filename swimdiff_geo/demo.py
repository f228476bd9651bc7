"""The demo behind ``make demo``: change detection and land cover on the bundled sample data.

    python -m swimdiff_geo.demo --out demo_output

Runs ``detect-change`` on the Sentinel-2 sample pair and ``map-landcover`` on a Landsat sample,
both with the bundled default models, writes quicklook PNGs next to the outputs and prints
where everything is and how to open it in QGIS.
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

from swimdiff_geo.inference.change import ChangeOptions, ChangeOutputs, detect_change
from swimdiff_geo.inference.defaults import default_model_path
from swimdiff_geo.inference.landcover import LandcoverOptions, LandcoverOutputs, map_landcover
from swimdiff_geo.quicklook import change_quicklook, landcover_quicklook

SAMPLE_DATA = Path(__file__).resolve().parent.parent / "sample_data"


def run_demo(out: Path, sample_data: Path = SAMPLE_DATA) -> dict[str, Path]:
    """Run both jobs into ``out`` (replaced if present); returns the paths of interest."""
    if out.exists():
        shutil.rmtree(out)
    s2_a = sample_data / "s2_pair" / "s2_date_a.tif"
    s2_b = sample_data / "s2_pair" / "s2_date_b.tif"
    landsat = sample_data / "landsat_pucallpa" / "landsat_2020.tif"
    change_dir, landcover_dir = out / "change_s2_lasvegas", out / "landcover_landsat_pucallpa"

    change = ChangeOutputs.in_dir(str(change_dir))
    t0 = time.perf_counter()
    summary = detect_change(str(s2_a), str(s2_b), change, ChangeOptions(min_area=1000.0))
    change_png = change_quicklook(s2_a, s2_b, change.mask, change_dir / "quicklook.png")
    print(f"detect-change  {s2_a.name} -> {s2_b.name} with {Path(summary['model']['path']).name}: "
          f"{summary['changed_area_ha']:.1f} ha changed "
          f"({summary['changed_percent_of_valid']:.1f}% of the valid area), "
          f"{summary['polygons']} polygons, {time.perf_counter() - t0:.1f} s")  # fmt: skip

    landcover = LandcoverOutputs.in_dir(str(landcover_dir), polygons=True)
    t0 = time.perf_counter()
    lc = map_landcover(str(landsat), landcover, LandcoverOptions(min_area=50_000.0))
    landcover_png = landcover_quicklook(
        landsat, landcover.landcover, landcover_dir / "quicklook.png"
    )
    shares = ", ".join(
        f"{c['class_name']} {c['percent_of_valid_area']:.1f}%" for c in lc["classes"]
    )
    print(f"map-landcover  {landsat.name} with {Path(lc['model']['path']).name}: {shares}, "
          f"{time.perf_counter() - t0:.1f} s")  # fmt: skip
    return {
        "change_dir": change_dir, "change_quicklook": change_png,
        "landcover_dir": landcover_dir, "landcover_quicklook": landcover_png,
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("demo_output"))
    args = parser.parse_args()
    print(f"default models: {default_model_path('change_detection')}\n"
          f"                {default_model_path('segmentation')}")  # fmt: skip
    paths = run_demo(args.out.resolve())
    print(f"""
Outputs
  change:     {paths["change_dir"]}
              change_probability.tif, change_mask.tif, change_polygons.gpkg, summary.json
  land cover: {paths["landcover_dir"]}
              landcover.tif, class_areas.csv, landcover.gpkg, summary.json
  quicklooks: {paths["change_quicklook"]}
              {paths["landcover_quicklook"]}

Open them in QGIS: drag the .tif and .gpkg files into the map (Layer > Add Layer > Add Raster
Layer / Add Vector Layer). Each raster has its QGIS style next to it (<name>.qml), so the
probability, the change mask and the class map open styled; the polygons carry their style
inside the .gpkg.
The change model is a SwiMDiff-pretrained Siamese ResNet-18 fine-tuned on OSCD (non-commercial
use only: its training labels are CC BY-NC-SA); the land-cover model for these Landsat
composites is an index rule. Model card and scores: docs/models.md.""")


if __name__ == "__main__":
    main()
