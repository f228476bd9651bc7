"""``swimdiffgeo:stackbands``: a Sentinel-2 product's bands as one multi-band GeoTIFF."""

from __future__ import annotations

import json
from typing import Any

from qgis.core import (
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProcessingOutputString,
    QgsProcessingParameterRasterDestination,
    QgsProcessingParameterRasterLayer,
    QgsProcessingParameterString,
)

from .. import styles
from .base import SwimdiffAlgorithm


class StackBandsAlgorithm(SwimdiffAlgorithm):
    """Runs :func:`swimdiff_geo.inference.stack.stack_bands` on the GDAL backend."""

    def name(self) -> str:
        return "stackbands"

    def displayName(self) -> str:  # noqa: N802 - QGIS API name
        return self.tr("Stack Sentinel-2 bands")

    def group(self) -> str:
        return self.tr("Inputs")

    def groupId(self) -> str:  # noqa: N802
        return "inputs"

    def shortHelpString(self) -> str:  # noqa: N802
        return self.tr(
            "Writes the bands of a Sentinel-2 product (a layer opened from its SAFE folder or "
            "ZIP) as one Cloud-Optimized GeoTIFF, as swimdiff-geo reads them: every band on the "
            "10 m grid (20 m and 60 m bands resampled bilinearly), named in its band "
            "description, with the +1000 offset of processing baseline 04.00 and later "
            "removed, so the digital numbers are those of older products and of the models' "
            "training data. A stack built by hand (Build virtual raster, Merge) keeps the "
            "offset, and the change model then finds no change. A layer of one file of a "
            "folder of band files (..._B01.tif ... ..._B12.tif) stacks the whole folder.\n\n"
            "Bands: names to keep, in this order, e.g. B04,B03,B02 (empty: all of them). "
            "Nodata is 0. Same engine as the command line: swimdiff-geo stack."
        )

    def initAlgorithm(self, config: dict[str, Any] | None = None) -> None:  # noqa: N802
        self.addParameter(
            QgsProcessingParameterRasterLayer(
                "INPUT", self.tr("Sentinel-2 product or folder of band files (any layer of it)")
            )
        )
        self.addParameter(
            QgsProcessingParameterString(
                "BANDS",
                self.tr("Band names to keep, in this order, e.g. B04,B03,B02 (empty: all)"),
                optional=True,
            )
        )
        self.add_extent_parameter()
        self.add_mask_clouds_parameter()
        self.addParameter(QgsProcessingParameterRasterDestination("OUTPUT", self.tr("Band stack")))
        self.addOutput(QgsProcessingOutputString("SUMMARY", self.tr("Run summary (JSON)")))

    def processAlgorithm(  # noqa: N802
        self,
        parameters: dict[str, Any],
        context: QgsProcessingContext,
        feedback: QgsProcessingFeedback,
    ) -> dict[str, Any]:
        self.check_dependencies()
        from swimdiff_geo.inference.inputs import parse_band_names
        from swimdiff_geo.inference.stack import StackOptions, stack_bands

        text = self.parameterAsString(parameters, "BANDS", context).strip()
        try:
            names = parse_band_names(text) if text else None
        except ValueError as exc:
            raise QgsProcessingException(f"BANDS: {exc}") from None
        out = self.raster_output(parameters, "OUTPUT", context)
        options = StackOptions(
            bands=names,
            mask_clouds=self.parameterAsBoolean(parameters, "MASK_CLOUDS", context),
            overwrite=True,  # QGIS asked the user already; destinations are replaced
            **self.extent(parameters, context, "INPUT"),
        )
        self.engine_origin(feedback)
        summary = self.run_engine(
            stack_bands,
            feedback,
            path=self.raster_path(parameters, "INPUT", context),
            out=out,
            options=options,
        )
        if summary["style"]:  # the engine wrote a true-colour style next to the stack
            styles.style_on_load(context, out, summary["style"])
        feedback.pushInfo(
            f"{len(summary['bands'])} bands ({', '.join(summary['bands'])}), "
            f"{summary['width']}x{summary['height']} px, {summary['dtype']}"
        )
        return {"OUTPUT": out, "SUMMARY": json.dumps(summary, default=str)}
