"""The ``swimdiffgeo`` Processing provider."""

from __future__ import annotations

import os

from qgis.core import QgsProcessingProvider
from qgis.PyQt.QtGui import QIcon

from .algorithms import ALGORITHMS

PROVIDER_ID = "swimdiffgeo"
ICON = os.path.join(os.path.dirname(os.path.abspath(__file__)), "icon.svg")


class SwimdiffGeoProvider(QgsProcessingProvider):
    """Change detection, land-cover mapping and model information algorithms.

    Raster outputs are GeoTIFF only (the engine writes Cloud-Optimized GeoTIFFs), vector outputs
    GeoPackage and tables CSV, so Processing never offers a format the engine cannot write.
    """

    def id(self) -> str:
        return PROVIDER_ID

    def name(self) -> str:
        return "swimdiff-geo"

    def longName(self) -> str:  # noqa: N802 - QGIS API name
        try:
            import swimdiff_geo

            return f"swimdiff-geo {swimdiff_geo.__version__}"
        except ImportError:
            return "swimdiff-geo"

    def icon(self) -> QIcon:
        return QIcon(ICON)

    def svgIconPath(self) -> str:  # noqa: N802
        return ICON

    def loadAlgorithms(self) -> None:  # noqa: N802
        for algorithm in ALGORITHMS:
            self.addAlgorithm(algorithm())

    def supportedOutputRasterLayerExtensions(self) -> list[str]:  # noqa: N802
        return ["tif"]

    def supportedOutputVectorLayerExtensions(self) -> list[str]:  # noqa: N802
        return ["gpkg"]

    def supportedOutputTableExtensions(self) -> list[str]:  # noqa: N802
        return ["csv"]

    def defaultRasterFileExtension(self) -> str:  # noqa: N802
        return "tif"

    def defaultVectorFileExtension(self, hasGeometry: bool = True) -> str:  # noqa: N802, N803
        return "gpkg"
