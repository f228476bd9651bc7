"""What the swimdiff-geo Processing algorithms share: parameters, engine calls, error mapping."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from typing import Any

from qgis.core import (
    QgsProcessing,
    QgsProcessingAlgorithm,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterDefinition,
    QgsProcessingParameterExtent,
    QgsProcessingParameterFile,
    QgsProcessingParameterNumber,
    QgsProcessingParameterString,
    QgsProcessingParameterVectorDestination,
    QgsProviderRegistry,
)
from qgis.PyQt.QtCore import QCoreApplication

from .. import dependencies

ONNX_FILTER = "ONNX models (*.onnx)"

# Engine messages name the CLI's options; in QGIS the same settings are these parameters.
_CLI_OPTION_TO_PARAMETER = {
    "--bands": "BANDS",
    "--min-area": "MIN_AREA",
    "--model": "MODEL",
    "--tile-size": "TILE_SIZE",
    "--overlap": "OVERLAP",
    "--threshold": "THRESHOLD",
    "--extent": "EXTENT",
    "--mask-clouds": "MASK_CLOUDS",
    "--stride": "STRIDE",
}
_CLI_OPTION = re.compile(r"(?:" + "|".join(map(re.escape, _CLI_OPTION_TO_PARAMETER)) + r")\b")


def qgis_terms(message: str) -> str:
    """An engine message with CLI option names replaced by Processing parameter names."""
    return _CLI_OPTION.sub(lambda m: _CLI_OPTION_TO_PARAMETER[m.group(0)], message)


class SwimdiffAlgorithm(QgsProcessingAlgorithm):
    """Base class: translation, help, dependency check and engine error mapping."""

    #: pip names of the modules this algorithm needs beyond QGIS's own Python.
    required_modules: dict[str, str] = dependencies.REQUIRED_MODULES

    def tr(self, text: str) -> str:
        return QCoreApplication.translate("swimdiffgeo", text)

    def createInstance(self) -> SwimdiffAlgorithm:  # noqa: N802 - QGIS API name
        return type(self)()

    def helpUrl(self) -> str:  # noqa: N802
        return "https://github.com/swimdiff-geo/swimdiff-geo/blob/main/docs/qgis.md"

    def canExecute(self) -> tuple[bool, str]:  # noqa: N802
        """Refuse to open (toolbox) or run when onnxruntime is missing, with install steps."""
        missing = dependencies.missing_modules(self.required_modules)
        if missing:
            return False, dependencies.install_instructions(missing)
        return True, ""

    # -- parameters ---------------------------------------------------------------------
    def add_model_parameter(self, description: str) -> None:
        """MODEL (optional): an ONNX file; the other bundled models (docs/models.md) are files
        in the plugin's folder, which the description says where to find."""
        self.addParameter(
            QgsProcessingParameterFile(
                "MODEL",
                self.tr(description)
                + self.tr(
                    "; the bundled models, e.g. s2_landcover_swimdiff.onnx, are in the plugin's "
                    "folder vendor/swimdiff_geo/default_models"
                ),
                behavior=QgsProcessingParameterFile.File,
                fileFilter=ONNX_FILTER,
                optional=True,
            )
        )

    def add_bands_parameter(self) -> None:
        """BANDS (advanced): 1-based band numbers in the model's band order, e.g. "2,3,4,8"."""
        bands = QgsProcessingParameterString(
            "BANDS",
            self.tr(
                "Band numbers in the model's band order, e.g. 2,3,4,8 (empty: by band "
                "descriptions, else all bands in order)"
            ),
            optional=True,
        )
        bands.setFlags(bands.flags() | QgsProcessingParameterDefinition.FlagAdvanced)
        self.addParameter(bands)

    def add_extent_parameter(self) -> None:
        """EXTENT (optional): map only this area; empty maps the whole input."""
        self.addParameter(
            QgsProcessingParameterExtent(
                "EXTENT", self.tr("Area to map (empty: the whole input)"), optional=True
            )
        )

    def add_mask_clouds_parameter(self) -> None:
        """MASK_CLOUDS (default off): pixels a Sentinel-2 product's cloud mask flags are nodata."""
        self.addParameter(
            QgsProcessingParameterBoolean(
                "MASK_CLOUDS",
                self.tr(
                    "Mask clouds (Sentinel-2 products of processing baseline 04.00 and later: "
                    "pixels their cloud mask flags become nodata)"
                ),
                defaultValue=False,
                optional=True,  # models and scripts saved before the parameter existed still run
            )
        )

    def extent(
        self, parameters: dict[str, Any], context: QgsProcessingContext, layer: str
    ) -> dict[str, Any]:
        """``extent`` and ``extent_crs`` options from EXTENT (nothing when empty): the
        rectangle in its own CRS (the map canvas's or the layer's it was drawn on); one typed
        without a CRS is in the CRS of input layer ``layer``, as for QGIS's own algorithms."""
        if not self.is_set(parameters, "EXTENT"):
            return {}
        rect = self.parameterAsExtent(parameters, "EXTENT", context)
        if rect.isNull() or rect.isEmpty():
            return {}
        crs = self.parameterAsExtentCrs(parameters, "EXTENT", context)
        if not crs.isValid():
            source = self.parameterAsRasterLayer(parameters, layer, context)
            crs = source.crs() if source is not None else crs
        return {
            "extent": (rect.xMinimum(), rect.yMinimum(), rect.xMaximum(), rect.yMaximum()),
            # "EPSG:32633" reads better in messages and the summary than its WKT
            "extent_crs": (crs.authid() or crs.toWkt()) if crs.isValid() else "EPSG:4326",
        }

    def add_tiling_parameters(self) -> None:
        """TILE_SIZE and OVERLAP (advanced; empty = the model's metadata)."""
        tile = QgsProcessingParameterNumber(
            "TILE_SIZE",
            self.tr("Tile size in pixels (empty: the model's tile_size)"),
            type=QgsProcessingParameterNumber.Integer,
            optional=True,
            minValue=8,
        )
        overlap = QgsProcessingParameterNumber(
            "OVERLAP",
            self.tr("Tile overlap in percent of the tile (empty: the model's tiles_overlap)"),
            type=QgsProcessingParameterNumber.Double,
            optional=True,
            minValue=0.0,
            maxValue=99.99,  # the CLI's range is [0, 100)
        )
        for parameter in (tile, overlap):
            parameter.setFlags(parameter.flags() | QgsProcessingParameterDefinition.FlagAdvanced)
            self.addParameter(parameter)

    def add_min_area_parameter(self, description: str) -> None:
        """MIN_AREA in m^2 (default 0); what it does is the algorithm's (its description)."""
        self.addParameter(
            QgsProcessingParameterNumber(
                "MIN_AREA",
                self.tr(description),
                type=QgsProcessingParameterNumber.Double,
                defaultValue=0.0,
                minValue=0.0,
            )
        )

    def add_polygons_parameter(self, description: str) -> None:
        """OUTPUT_POLYGONS: an optional GeoPackage destination, off by default."""
        self.addParameter(
            QgsProcessingParameterVectorDestination(
                "OUTPUT_POLYGONS",
                self.tr(description),
                type=QgsProcessing.TypeVectorPolygon,
                optional=True,
                createByDefault=False,
            )
        )

    # -- reading parameters -------------------------------------------------------------
    def polygons_path(
        self, parameters: dict[str, Any], context: QgsProcessingContext, what: str
    ) -> str | None:
        """The OUTPUT_POLYGONS file (None when skipped); refused unless a GeoPackage."""
        polygons = self.output_path(parameters, "OUTPUT_POLYGONS", context)
        if polygons is not None and re.match(r"^(ogr|memory|postgres|spatialite):", polygons):
            raise QgsProcessingException(
                f"OUTPUT_POLYGONS: {polygons}: {what} are written as a GeoPackage file of their "
                "own, not into a layer of an existing GeoPackage, a temporary layer or a "
                "database table: choose 'Save to File...' with a name ending in .gpkg"
            )
        if polygons is not None and not polygons.lower().endswith(".gpkg"):
            raise QgsProcessingException(
                f"OUTPUT_POLYGONS: {polygons}: {what} are written as a GeoPackage file; give a "
                "path ending in .gpkg"
            )
        return polygons

    def model_path(self, parameters: dict[str, Any], context: QgsProcessingContext) -> str | None:
        """The MODEL file, or None for the bundled default."""
        path = self.parameterAsFile(parameters, "MODEL", context)
        return path or None

    @staticmethod
    def is_set(parameters: dict[str, Any], name: str) -> bool:
        value = parameters.get(name)
        return value is not None and value != ""

    def optional_int(
        self, parameters: dict[str, Any], name: str, context: QgsProcessingContext
    ) -> int | None:
        if not self.is_set(parameters, name):
            return None
        return self.parameterAsInt(parameters, name, context)

    def optional_double(
        self, parameters: dict[str, Any], name: str, context: QgsProcessingContext
    ) -> float | None:
        if not self.is_set(parameters, name):
            return None
        return self.parameterAsDouble(parameters, name, context)

    def bands(self, parameters: dict[str, Any], context: QgsProcessingContext) -> list[int] | None:
        """BANDS as a list of 1-based band numbers, None when empty."""
        from swimdiff_geo.inference.inputs import parse_band_numbers

        text = self.parameterAsString(parameters, "BANDS", context).strip()
        if not text:
            return None
        try:
            return parse_band_numbers(text)
        except ValueError as exc:
            raise QgsProcessingException(f"BANDS: {exc}") from None

    def raster_path(
        self, parameters: dict[str, Any], name: str, context: QgsProcessingContext
    ) -> str:
        """The file behind raster layer parameter ``name``; the engine reads files with GDAL."""
        layer = self.parameterAsRasterLayer(parameters, name, context)
        if layer is None:
            raise QgsProcessingException(f"{name}: no raster layer given or it cannot be opened")
        if layer.providerType() != "gdal":
            raise QgsProcessingException(
                f"{name}: layer '{layer.name()}' comes from the '{layer.providerType()}' "
                "provider; swimdiff-geo reads raster files (GeoTIFF or any file GDAL opens). "
                "Save it as a GeoTIFF first (Raster > Conversion > Translate)."
            )
        decoded = QgsProviderRegistry.instance().decodeUri("gdal", layer.source())
        if not decoded.get("path") or decoded.get("layerName"):
            # a raster table of a GeoPackage, a variable of a NetCDF file ("GPKG:/x.gpkg:t"):
            # GDAL opens the source as QGIS wrote it, and the path alone is another raster
            return layer.source()
        # a file inside an archive (/vsizip/...) or a Sentinel-2 product's subdataset: decodeUri
        # splits the GDAL name into prefix, archive and suffix; the engine needs all of it
        return decoded.get("vsiPrefix", "") + decoded["path"] + decoded.get("vsiSuffix", "")

    def raster_output(
        self, parameters: dict[str, Any], name: str, context: QgsProcessingContext
    ) -> str:
        """A raster destination's path; the engine writes (Cloud-Optimized) GeoTIFF only."""
        path = self.parameterAsOutputLayer(parameters, name, context)
        if not path.lower().endswith((".tif", ".tiff")):
            raise QgsProcessingException(
                f"{name}: {path}: outputs are written as Cloud-Optimized GeoTIFF; give a path "
                "ending in .tif"
            )
        return path

    def output_path(
        self, parameters: dict[str, Any], name: str, context: QgsProcessingContext
    ) -> str | None:
        """A destination parameter's file path (None when an optional output is skipped)."""
        if not self.is_set(parameters, name):
            return None
        path = self.parameterAsOutputLayer(parameters, name, context)
        return path or None

    # -- running the engine -------------------------------------------------------------
    def check_dependencies(self, extra: dict[str, str] | None = None) -> None:
        """QgsProcessingException with install steps if a needed module is missing."""
        if not dependencies.ensure_engine_importable():
            raise QgsProcessingException(
                "the swimdiff_geo engine is neither installed in QGIS's Python nor vendored in "
                f"{dependencies.VENDOR_DIR}; reinstall the plugin from its ZIP file"
            )
        missing = dependencies.missing_modules({**self.required_modules, **(extra or {})})
        if missing:
            raise QgsProcessingException(dependencies.install_instructions(missing))

    def engine_origin(self, feedback: QgsProcessingFeedback) -> None:
        """Log which swimdiff_geo copy runs (the vendored one or an installed one)."""
        import swimdiff_geo

        feedback.pushInfo(
            f"swimdiff-geo engine {swimdiff_geo.__version__} from "
            f"{os.path.dirname(os.path.abspath(swimdiff_geo.__file__))}"
        )

    def run_engine(
        self, job: Callable[..., dict[str, Any]], feedback: QgsProcessingFeedback, **kwargs: Any
    ) -> dict[str, Any]:
        """Run an engine job with QGIS progress, cancellation and logging.

        Engine errors (SwimdiffError: bad input, bad model, output problems, cancellation)
        become QgsProcessingException with the engine's message, the same text the CLI prints.
        """
        from swimdiff_geo.inference.errors import CancelledError, SwimdiffError
        from swimdiff_geo.inference.io_gdal import GdalBackend

        def progress(fraction: float) -> None:
            feedback.setProgress(100.0 * min(max(fraction, 0.0), 1.0))

        def log(message: str) -> None:
            message = qgis_terms(message)
            if message.startswith("warning"):
                feedback.pushWarning(message)  # shown highlighted in the log
            else:  # in the log an information line needs no "info: " label
                feedback.pushInfo(message.removeprefix("info: "))

        try:
            return job(
                backend=GdalBackend(),
                progress=progress,
                is_cancelled=feedback.isCanceled,
                log=log,
                **kwargs,
            )
        except CancelledError as exc:
            message = self.tr("Cancelled: partial outputs were removed.")
            raise QgsProcessingException(message) from exc
        except SwimdiffError as exc:
            raise QgsProcessingException(qgis_terms(str(exc))) from exc
        except ValueError as exc:  # option validation in the engine (threshold, tile size)
            raise QgsProcessingException(qgis_terms(str(exc))) from exc
