"""swimdiff-geo QGIS plugin: a Processing provider running the torch-free swimdiff-geo engine.

The engine (``swimdiff_geo``) comes from QGIS's Python if it is installed there, otherwise from
the copy vendored in ``vendor/`` by ``qgis_plugin/build_zip.py``. Neither torch nor rasterio is
ever imported: rasters go through osgeo.gdal (``swimdiff_geo.inference.io_gdal``).
"""

from __future__ import annotations

from typing import Any


def classFactory(iface: Any):  # noqa: N802 - QGIS API name
    from .dependencies import ensure_engine_importable

    ensure_engine_importable()
    from .plugin import SwimdiffGeoPlugin

    return SwimdiffGeoPlugin(iface)
