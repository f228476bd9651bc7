"""``swimdiffgeo:detectchange``: two dates of a scene to change probability, mask and polygons."""

from __future__ import annotations

import json
import os
from typing import Any

from qgis.core import (
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProcessingOutputNumber,
    QgsProcessingOutputString,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterDestination,
    QgsProcessingParameterRasterLayer,
)

from .. import dependencies, styles
from .base import SwimdiffAlgorithm


class DetectChangeAlgorithm(SwimdiffAlgorithm):
    """Runs :func:`swimdiff_geo.inference.change.detect_change` on the GDAL backend."""

    def name(self) -> str:
        return "detectchange"

    def displayName(self) -> str:  # noqa: N802 - QGIS API name
        return self.tr("Detect change")

    def group(self) -> str:
        return self.tr("Change detection")

    def groupId(self) -> str:  # noqa: N802
        return "changedetection"

    def shortHelpString(self) -> str:  # noqa: N802
        return self.tr(
            "Detects change between two images of the same place (A: earlier, B: later) with a "
            "swimdiff-geo ONNX change-detection model, in overlapping tiles.\n\n"
            "Outputs are on image A's grid (CRS, pixel size, extent cut to the overlap with B); "
            "B is reprojected onto it (bilinear) when its grid differs. The images must hold "
            "the bands the model expects, in its order (see Model information): "
            "named by band descriptions, or mapped with "
            "the advanced BANDS parameter.\n\n"
            "Change probability: float32 in [0, 1], nodata -1. Change mask: 1 = change, "
            "0 = no change, 255 = nodata; a pixel is change where probability >= threshold, "
            "in an 8-connected changed region of at least the minimum area (smaller regions are "
            "no change in the mask, the changed area and the polygons). Change polygons "
            "(optional): one polygon per changed region, with its area in m2 and mean "
            "probability.\n\n"
            "Empty model, threshold, tile size or overlap: the values in the model's metadata "
            "(the bundled default model is a Sentinel-2 13-band model).\n\n"
            "Same engine and same pixels as the command line: swimdiff-geo detect-change."
        )

    def initAlgorithm(self, config: dict[str, Any] | None = None) -> None:  # noqa: N802
        self.addParameter(
            QgsProcessingParameterRasterLayer("INPUT_A", self.tr("Image A (earlier date)"))
        )
        self.addParameter(
            QgsProcessingParameterRasterLayer("INPUT_B", self.tr("Image B (later date)"))
        )
        self.add_extent_parameter()
        self.add_mask_clouds_parameter()
        self.add_model_parameter("Change-detection ONNX model (empty: the bundled default)")
        self.addParameter(
            QgsProcessingParameterNumber(
                "THRESHOLD",
                self.tr("Change threshold on the probability (empty: the model's)"),
                type=QgsProcessingParameterNumber.Double,
                optional=True,
                minValue=0.0,
                maxValue=1.0,
            )
        )
        self.add_tiling_parameters()
        self.add_bands_parameter()
        self.add_min_area_parameter("Minimum change area (m²)")
        self.addParameter(
            QgsProcessingParameterRasterDestination(
                "OUTPUT_PROBABILITY", self.tr("Change probability")
            )
        )
        self.addParameter(
            QgsProcessingParameterRasterDestination("OUTPUT_MASK", self.tr("Change mask"))
        )
        self.add_polygons_parameter("Change polygons")
        self.addOutput(QgsProcessingOutputNumber("CHANGED_AREA_HA", self.tr("Changed area (ha)")))
        self.addOutput(
            QgsProcessingOutputNumber("CHANGED_PERCENT", self.tr("Changed % of valid pixels"))
        )
        self.addOutput(QgsProcessingOutputNumber("POLYGON_COUNT", self.tr("Change polygons")))
        self.addOutput(QgsProcessingOutputString("SUMMARY", self.tr("Run summary (JSON)")))

    def processAlgorithm(  # noqa: N802
        self,
        parameters: dict[str, Any],
        context: QgsProcessingContext,
        feedback: QgsProcessingFeedback,
    ) -> dict[str, Any]:
        polygons = self.polygons_path(parameters, context, "change polygons")
        self.check_dependencies(dependencies.POLYGON_MODULES if polygons else None)
        from swimdiff_geo.inference.change import ChangeOptions, ChangeOutputs, detect_change

        image_a = self.raster_path(parameters, "INPUT_A", context)
        image_b = self.raster_path(parameters, "INPUT_B", context)
        probability = self.raster_output(parameters, "OUTPUT_PROBABILITY", context)
        mask = self.raster_output(parameters, "OUTPUT_MASK", context)
        if os.path.abspath(probability) == os.path.abspath(mask):
            raise QgsProcessingException(
                f"OUTPUT_PROBABILITY and OUTPUT_MASK are the same file ({mask}); give two paths"
            )
        options = ChangeOptions(
            model=self.model_path(parameters, context),
            threshold=self.optional_double(parameters, "THRESHOLD", context),
            tile_size=self.optional_int(parameters, "TILE_SIZE", context),
            overlap=self.optional_double(parameters, "OVERLAP", context),
            bands=self.bands(parameters, context),
            min_area=self.parameterAsDouble(parameters, "MIN_AREA", context),
            overwrite=True,  # QGIS asked the user already; destinations are replaced
            mask_clouds=self.parameterAsBoolean(parameters, "MASK_CLOUDS", context),
            **self.extent(parameters, context, "INPUT_A"),
        )
        self.engine_origin(feedback)
        summary = self.run_engine(
            detect_change,
            feedback,
            image_a=image_a,
            image_b=image_b,
            outputs=ChangeOutputs(probability=probability, mask=mask, polygons=polygons),
            options=options,
        )
        # The engine wrote each raster's QML style next to it; apply them as layers load.
        styles.style_on_load(context, probability, styles.sidecar_path(probability))
        styles.style_on_load(context, mask, styles.sidecar_path(mask))
        pixels = summary.get("pixels", {})
        feedback.pushInfo(
            f"Changed: {pixels.get('changed')} of {pixels.get('valid')} valid pixels "
            f"({summary.get('changed_percent_of_valid', 0.0):.2f} %), threshold "
            f"{summary.get('threshold')}"
        )
        return {
            "OUTPUT_PROBABILITY": probability,
            "OUTPUT_MASK": mask,
            "OUTPUT_POLYGONS": polygons,
            "CHANGED_AREA_HA": summary.get("changed_area_ha"),
            "CHANGED_PERCENT": summary.get("changed_percent_of_valid"),
            "POLYGON_COUNT": summary.get("polygons"),
            "SUMMARY": json.dumps(summary, default=str),
        }
