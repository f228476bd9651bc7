"""The plugin object QGIS loads: registers the Processing provider, nothing else."""

from __future__ import annotations

from typing import Any

from qgis.core import Qgis, QgsApplication

from . import dependencies
from .provider import SwimdiffGeoProvider


class SwimdiffGeoPlugin:
    """QGIS calls ``initProcessing`` (also in qgis_process), then ``initGui`` in the desktop."""

    def __init__(self, iface: Any = None) -> None:
        self.iface = iface
        self.provider: SwimdiffGeoProvider | None = None

    def initProcessing(self) -> None:  # noqa: N802 - QGIS API name
        if self.provider is None:
            self.provider = SwimdiffGeoProvider()
            QgsApplication.processingRegistry().addProvider(self.provider)

    def initGui(self) -> None:  # noqa: N802
        self.initProcessing()
        missing = dependencies.missing_modules(dependencies.REQUIRED_MODULES)
        if missing and self.iface is not None:
            self.iface.messageBar().pushMessage(
                "swimdiff-geo",
                dependencies.install_instructions(missing).replace("\n", " "),
                level=Qgis.Warning,
                duration=0,
            )

    def unload(self) -> None:
        if self.provider is not None:
            QgsApplication.processingRegistry().removeProvider(self.provider)
            self.provider = None
