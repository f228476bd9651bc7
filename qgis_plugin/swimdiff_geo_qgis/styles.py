"""Output styling: QML styles for the change outputs and the land-cover classes.

Each styled output gets a ``<name>.qml`` side-car (QGIS applies it whenever the file is opened,
also outside this run), and layers loaded at the end of a run get the style through a
:class:`StylePostProcessor`.
"""

from __future__ import annotations

import os
from xml.sax.saxutils import quoteattr

from qgis.core import (
    QgsMapLayer,
    QgsProcessingContext,
    QgsProcessingFeedback,
    QgsProcessingLayerPostProcessorInterface,
)

STYLES_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "styles")
CHANGE_MASK_QML = os.path.join(STYLES_DIR, "change_mask.qml")
CHANGE_PROBABILITY_QML = os.path.join(STYLES_DIR, "change_probability.qml")

# Used for classes the model gives no colour for (the "tab10" palette).
FALLBACK_COLORS = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
    "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
)  # fmt: skip

_PALETTED_QML = """<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>
<qgis version="3.22.0" styleCategories="Symbology">
  <pipe>
    <rasterrenderer opacity="1" type="paletted" nodataColor="" alphaBand="-1" band="1">
      <rasterTransparency/>
      <colorPalette>
{entries}
      </colorPalette>
    </rasterrenderer>
    <brightnesscontrast contrast="0" gamma="1" brightness="0"/>
    <rasterresampler maxOversampling="2"/>
  </pipe>
  <blendMode>0</blendMode>
</qgis>
"""


def landcover_qml(class_names: dict[str, str], class_colors: dict[str, str]) -> str:
    """A paletted-renderer QML: one entry per class id with the model's colour and name.

    ``class_names`` / ``class_colors`` are the model metadata's dicts (id as a string ->
    name / ``"#rrggbb"``); classes without a colour get one from :data:`FALLBACK_COLORS`.
    """
    entries = []
    for index, class_id in enumerate(sorted(class_names, key=int)):
        color = class_colors.get(class_id) or FALLBACK_COLORS[index % len(FALLBACK_COLORS)]
        entries.append(
            f"        <paletteEntry value={quoteattr(str(int(class_id)))} "
            f'color={quoteattr(color.lower())} alpha="255" '
            f"label={quoteattr(str(class_names[class_id]))}/>"
        )
    return _PALETTED_QML.format(entries="\n".join(entries))


def sidecar_path(raster_path: str) -> str:
    """Where QGIS looks for a file's default style: ``name.tif`` -> ``name.qml``."""
    return os.path.splitext(raster_path)[0] + ".qml"


def write_sidecar(raster_path: str, qml_text: str) -> str:
    """Write ``qml_text`` as the default style of ``raster_path``; returns the .qml path."""
    path = sidecar_path(raster_path)
    with open(path, "w", encoding="utf-8") as f:
        f.write(qml_text)
    return path


def read_qml(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


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
