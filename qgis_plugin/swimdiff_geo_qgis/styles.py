"""Output styling in QGIS: layers loaded at the end of a run get their style applied.

The engine writes each styled raster's ``<name>.qml`` side-car itself
(:mod:`swimdiff_geo.inference.qml`; QGIS applies it whenever the file is opened, also outside
this run); layers Processing loads on completion get it through a :class:`StylePostProcessor`.
"""

from __future__ import annotations

from qgis.core import (
    QgsMapLayer,
    QgsProcessingContext,
    QgsProcessingFeedback,
    QgsProcessingLayerPostProcessorInterface,
)

from swimdiff_geo.inference.qml import sidecar_path  # noqa: F401 - used by the algorithms


class StylePostProcessor(QgsProcessingLayerPostProcessorInterface):
    """Applies a QML file to an output layer when Processing loads it into the project."""

    # Processing keeps only a C++ pointer: the Python objects must outlive the algorithm run.
    _alive: list[StylePostProcessor] = []

    def __init__(self, qml_path: str) -> None:
        super().__init__()
        self.qml_path = qml_path

    def postProcessLayer(  # noqa: N802 - QGIS API name
        self,
        layer: QgsMapLayer,
        context: QgsProcessingContext,
        feedback: QgsProcessingFeedback,
    ) -> None:
        _message, ok = layer.loadNamedStyle(self.qml_path)
        if ok:
            layer.triggerRepaint()
        else:
            feedback.reportError(f"could not apply style {self.qml_path} to {layer.name()}")

    @classmethod
    def create(cls, qml_path: str) -> StylePostProcessor:
        processor = cls(qml_path)
        cls._alive.append(processor)
        return processor


def style_on_load(context: QgsProcessingContext, output_path: str, qml_path: str) -> None:
    """Style ``output_path`` with ``qml_path`` if Processing will load it into the project."""
    if context.willLoadLayerOnCompletion(output_path):
        details = context.layerToLoadOnCompletionDetails(output_path)
        details.setPostProcessor(StylePostProcessor.create(qml_path))
