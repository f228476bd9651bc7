"""``swimdiffgeo:maplandcover``: one image to a land-cover class map and a class-area table."""

from __future__ import annotations

import json
from typing import Any

from qgis.core import (
    QgsProcessingContext,
    QgsProcessingFeedback,
    QgsProcessingOutputNumber,
    QgsProcessingOutputString,
    QgsProcessingParameterDefinition,
    QgsProcessingParameterFileDestination,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterDestination,
    QgsProcessingParameterRasterLayer,
    QgsProcessingUtils,
)

from .. import dependencies, styles
from .base import SwimdiffAlgorithm


class MapLandcoverAlgorithm(SwimdiffAlgorithm):
    """Runs :func:`swimdiff_geo.inference.landcover.map_landcover` on the GDAL backend."""

    def name(self) -> str:
        return "maplandcover"

    def displayName(self) -> str:  # noqa: N802 - QGIS API name
        return self.tr("Map land cover")

    def group(self) -> str:
        return self.tr("Land cover")

    def groupId(self) -> str:  # noqa: N802
        return "landcover"

    def shortHelpString(self) -> str:  # noqa: N802
        return self.tr(
            "Maps land cover in an image with a swimdiff-geo ONNX segmentation model (one class "
            "per pixel) or patch-classification model (one class per cell), in overlapping "
            "tiles.\n\n"
            "Land cover: uint8 class ids on the image's grid, nodata 255, styled with the "
            "model's class colours and names. Class areas (optional): a CSV table with one row "
            "per class: class_id, class_name, pixels, area in m2 and ha, percent of the valid "
            "area. Polygons (optional): one GeoPackage polygon per connected same-class region, "
            "with class_id, class_name, pixels and area_m2.\n\n"
            "Minimum mapping unit (m2): every connected same-class region smaller than this "
            "joins the neighbouring class it shares the longest edge with, in the land cover, "
            "the class areas and the polygons alike (no holes); 0 keeps every pixel as "
            "classified.\n\n"
            "Empty model: the bundled default (a 4-band Landsat model). The image must hold the "
            "bands the model expects, in its order (see Model information): "
            "named by band descriptions, or mapped with "
            "the advanced BANDS parameter.\n\n"
            "Same engine and same pixels as the command line: swimdiff-geo map-landcover."
        )

    def initAlgorithm(self, config: dict[str, Any] | None = None) -> None:  # noqa: N802
        self.addParameter(QgsProcessingParameterRasterLayer("INPUT", self.tr("Image")))
        self.add_extent_parameter()
        self.add_mask_clouds_parameter()
        self.add_model_parameter("Land-cover ONNX model (empty: the bundled default)")
        self.add_tiling_parameters()
        self.add_bands_parameter()
        stride = QgsProcessingParameterNumber(
            "STRIDE",
            self.tr(
                "Patch-classification models only: class-map cell size in pixels "
                "(empty: half the tile size)"
            ),
            type=QgsProcessingParameterNumber.Integer,
            optional=True,
            minValue=1,
        )
        stride.setFlags(stride.flags() | QgsProcessingParameterDefinition.FlagAdvanced)
        self.addParameter(stride)
        self.add_min_area_parameter("Minimum mapping unit (m²)")
        self.addParameter(QgsProcessingParameterRasterDestination("OUTPUT", self.tr("Land cover")))
        self.addParameter(
            QgsProcessingParameterFileDestination(
                "OUTPUT_AREAS",
                self.tr("Class areas table"),
                fileFilter="CSV files (*.csv)",
                optional=True,
                createByDefault=False,
            )
        )
        self.add_polygons_parameter("Land-cover polygons")
        self.addOutput(QgsProcessingOutputNumber("POLYGON_COUNT", self.tr("Land-cover polygons")))
        self.addOutput(QgsProcessingOutputString("SUMMARY", self.tr("Run summary (JSON)")))

    def processAlgorithm(  # noqa: N802
        self,
        parameters: dict[str, Any],
        context: QgsProcessingContext,
        feedback: QgsProcessingFeedback,
    ) -> dict[str, Any]:
        polygons = self.polygons_path(parameters, context, "land-cover polygons")
        min_area = self.parameterAsDouble(parameters, "MIN_AREA", context)
        regions = polygons is not None or min_area > 0
        self.check_dependencies(dependencies.POLYGON_MODULES if regions else None)
        from swimdiff_geo.inference.landcover import (
            LandcoverOptions,
            LandcoverOutputs,
            map_landcover,
        )

        image = self.raster_path(parameters, "INPUT", context)
        landcover = self.raster_output(parameters, "OUTPUT", context)
        areas = None
        if self.is_set(parameters, "OUTPUT_AREAS"):
            areas = self.parameterAsFileOutput(parameters, "OUTPUT_AREAS", context) or None
        options = LandcoverOptions(
            model=self.model_path(parameters, context),
            tile_size=self.optional_int(parameters, "TILE_SIZE", context),
            overlap=self.optional_double(parameters, "OVERLAP", context),
            bands=self.bands(parameters, context),
            stride=self.optional_int(parameters, "STRIDE", context),
            min_area=min_area,
            overwrite=True,  # QGIS asked the user already; destinations are replaced
            mask_clouds=self.parameterAsBoolean(parameters, "MASK_CLOUDS", context),
            **self.extent(parameters, context, "INPUT"),
        )
        self.engine_origin(feedback)
        summary = self.run_engine(
            map_landcover,
            feedback,
            image=image,
            outputs=LandcoverOutputs(landcover=landcover, areas_csv=areas, polygons=polygons),
            options=options,
        )
        # The engine wrote the class map's QML style (model colours and names) next to it.
        styles.style_on_load(context, landcover, styles.sidecar_path(landcover))
        if areas and context.project() is not None and context.willLoadLayerOnCompletion(landcover):
            # Where the outputs are loaded (toolbox run), load the area table with them.
            context.addLayerToLoadOnCompletion(
                areas,
                QgsProcessingContext.LayerDetails(
                    self.tr("Class areas"), context.project(), "OUTPUT_AREAS",
                    QgsProcessingUtils.LayerHint.Vector,
                ),
            )  # fmt: skip
        for row in summary.get("classes", []):
            feedback.pushInfo(
                f"  {row.get('class_id')} {row.get('class_name')}: "
                f"{row.get('percent_of_valid_area', 0.0) or 0.0:.2f} % of the valid area"
            )
        return {
            "OUTPUT": landcover,
            "OUTPUT_AREAS": areas,
            "OUTPUT_POLYGONS": polygons,
            "POLYGON_COUNT": summary.get("polygons"),
            "SUMMARY": json.dumps(summary, default=str),
        }
