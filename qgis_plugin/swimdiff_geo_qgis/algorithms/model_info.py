"""``swimdiffgeo:modelinfo``: print and return the metadata of a swimdiff-geo ONNX model."""

from __future__ import annotations

import json
from typing import Any

from qgis.core import (
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProcessingOutputNumber,
    QgsProcessingOutputString,
)

from .base import SwimdiffAlgorithm


class ModelInfoAlgorithm(SwimdiffAlgorithm):
    """Reads a model's contract (docs/model-format.md) and its input/output shapes."""

    def name(self) -> str:
        return "modelinfo"

    def displayName(self) -> str:  # noqa: N802 - QGIS API name
        return self.tr("Model information")

    def group(self) -> str:
        return self.tr("Models")

    def groupId(self) -> str:  # noqa: N802
        return "models"

    def shortHelpString(self) -> str:  # noqa: N802
        return self.tr(
            "Prints the metadata of a swimdiff-geo ONNX model: its type (change_detection, "
            "segmentation, ...), the bands it expects in order, tile size and overlap, the "
            "decision threshold, class names and colours, and its input and output shapes. "
            "Leave Model empty to describe the bundled default change-detection model.\n\n"
            "Outputs: METADATA (all of it as JSON), MODEL_TYPE, NAME, BANDS (comma-separated), "
            "TILE_SIZE, THRESHOLD, NUM_CLASSES, MODEL (the file described)."
        )

    def initAlgorithm(self, config: dict[str, Any] | None = None) -> None:  # noqa: N802
        self.add_model_parameter("ONNX model (empty: the bundled change-detection model)")
        self.addOutput(QgsProcessingOutputString("METADATA", self.tr("Metadata (JSON)")))
        self.addOutput(QgsProcessingOutputString("MODEL", self.tr("Model file")))
        self.addOutput(QgsProcessingOutputString("MODEL_TYPE", self.tr("Model type")))
        self.addOutput(QgsProcessingOutputString("NAME", self.tr("Model name")))
        self.addOutput(QgsProcessingOutputString("BANDS", self.tr("Bands, in input order")))
        self.addOutput(QgsProcessingOutputNumber("TILE_SIZE", self.tr("Tile size (pixels)")))
        self.addOutput(QgsProcessingOutputNumber("THRESHOLD", self.tr("Decision threshold")))
        self.addOutput(QgsProcessingOutputNumber("NUM_CLASSES", self.tr("Number of classes")))

    def processAlgorithm(  # noqa: N802
        self,
        parameters: dict[str, Any],
        context: QgsProcessingContext,
        feedback: QgsProcessingFeedback,
    ) -> dict[str, Any]:
        self.check_dependencies()
        from swimdiff_geo.inference.contract import load_model
        from swimdiff_geo.inference.defaults import default_model_path
        from swimdiff_geo.inference.errors import SwimdiffError

        try:
            path = self.model_path(parameters, context) or default_model_path("change_detection")
            model = load_model(path, device="cpu")
        except SwimdiffError as exc:
            raise QgsProcessingException(str(exc)) from exc
        contract = model.contract
        # what `swimdiff-geo info` prints, keys with their units (shapes: "N" for batch axes)
        metadata = json.loads(json.dumps(model.describe(), default=str))
        feedback.pushInfo(f"Model: {path}")
        for key, value in metadata.items():
            if key == "path" or value in ({}, [], "", None):
                continue
            text = value if isinstance(value, str) else json.dumps(value)
            feedback.pushInfo(f"  {key}: {text}")
        return {
            "METADATA": json.dumps(metadata),
            "MODEL": path,
            "MODEL_TYPE": contract.model_type,
            "NAME": contract.name,
            "BANDS": ",".join(contract.bands),
            "TILE_SIZE": contract.tile_size,
            "THRESHOLD": float(contract.threshold),
            "NUM_CLASSES": contract.num_classes,
        }
